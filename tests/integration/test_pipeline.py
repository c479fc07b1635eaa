"""The real chain on real Celery workers and a private Redis: style and diffusion jobs,
batches, failures, and what travels in the messages."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from cache.latents import latent_redis_key
from safety.png import decode_png
from tasks.jobs import JobParams
from tasks.present import job_view
from tasks.submit import Upload, submit_job
from tests.conftest import declare_test_queue, encode, photo, routes_to, wait_for_job

pytestmark = pytest.mark.integration


def _submit(client, image_bytes: bytes, **params):
    return client.post("/api/v1/jobs", data={"image": (io.BytesIO(image_bytes), "photo.png"),
                                             "params": json.dumps(params)},
                       content_type="multipart/form-data")


def _fetcher(client):
    return lambda job_id: client.get(f"/api/v1/jobs/{job_id}").get_json()


def _image(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.data)).convert("RGB"))


def test_style_job_runs_all_four_stages(client, workers):
    original = photo("astronaut", size=256)
    response = _submit(client, encode(original, "JPEG", quality=92), engine="style", style="cartoon", upscale=2)
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["status"] == "queued" and response.headers["Location"].endswith(job["id"])

    job = wait_for_job(_fetcher(client), job["id"])
    assert job["status"] == "succeeded", job
    assert all(stage["state"] == "done" for stage in job["stages"].values())
    assert [job["stages"][s]["queue"] for s in ("encode", "generate", "enhance", "audit")] == ["cpu"] * 4
    assert job["audit"]["verdict"] == "pass"
    assert isinstance(job["params"]["seed"], int)  # the seed it ran with is recorded

    result = _image(client.get(job["links"]["result"]))
    assert result.shape == (512, 512, 3)  # upscaled ×2
    downsized = np.asarray(Image.fromarray(result).resize((256, 256)), dtype=float)
    assert np.abs(downsized - original).mean() > 8  # restyled, not a copy
    page = client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert "Audit: <strong>pass</strong> · NSFW score" in page and "download PNG" in page
    download = client.get(job["links"]["result"] + "?download=1")
    assert "attachment" in download.headers["Content-Disposition"]


def test_diffusion_job_keeps_its_latent_in_redis_not_in_messages(client, workers, redis_client):
    published: list[bytes] = []
    stop = threading.Event()
    ready = threading.Event()

    def watch():  # every command Redis runs, to see what the Celery messages carry
        with redis_client.monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                if stop.is_set():
                    return
                if command["command"].startswith("LPUSH"):
                    published.append(command["command"])

    threading.Thread(target=watch, daemon=True).start()
    ready.wait(5)
    response = _submit(client, encode(photo("coffee", size=96)), engine="diffusion", prompt="a red cup",
                       steps=4, strength=0.75, size=64, seed=7)
    assert response.status_code == 202, response.get_json()
    job = wait_for_job(_fetcher(client), response.get_json()["id"])
    stop.set()
    redis_client.ping()  # wakes the monitor so the thread ends

    assert job["status"] == "succeeded", job
    assert [job["stages"][s]["queue"] for s in ("encode", "generate")] == ["gpu", "gpu"]
    stored = client.application.extensions["pixelmill"].store.fetch(job["id"])
    latent_key = stored.outputs["latent"]
    assert redis_client.exists(latent_redis_key(latent_key))
    assert redis_client.ttl(latent_redis_key(latent_key)) > 0

    messages = [m for m in published if stored.id in m]
    assert len(messages) == 4  # one per stage
    latent = redis_client.get(latent_redis_key(latent_key))
    for message in messages:
        envelope = json.loads(message.split(" ", 2)[2].strip('"').encode().decode("unicode_escape"))
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        assert args == [stored.id] and kwargs == {}
        # ids and references only: the job's record rides along (where the next stage's
        # compare-and-set starts), naming the latent by its key, never its bytes
        record = json.loads(envelope["headers"]["pixelmill_record"])  # the record's text, as a JSON string
        assert record["id"] == stored.id and record["outputs"].get("latent") in (None, latent_key)
        assert base64.b64encode(latent[:48]).decode() not in message and repr(latent[:48])[2:-1] not in message

    result = _image(client.get(job["links"]["result"]))
    assert result.shape == (40, 64, 3)  # coffee is 3:2 → longer side 64, sides multiples of 8


def test_same_photo_new_prompt_reuses_the_latent(client, workers):
    image = encode(photo("chelsea", size=80))
    first = wait_for_job(_fetcher(client), _submit(client, image, engine="diffusion", prompt="a cat",
                                                   steps=4, strength=0.5, size=64).get_json()["id"])
    second = wait_for_job(_fetcher(client), _submit(client, image, engine="diffusion", prompt="a tiger",
                                                    steps=4, strength=0.5, size=64).get_json()["id"])
    assert first["status"] == second["status"] == "succeeded"
    assert first["stages"]["encode"]["cached"] is False
    assert second["stages"]["encode"]["cached"] is True


def test_intermediates_are_stored_uncompressed_and_what_is_served_compressed(client, workers):
    """The normalised input and a restyled image that enhance will change are read only by later
    stages: written uncompressed (fast); the result, and a restyled image served as it is, are not."""
    rt = client.application.extensions["pixelmill"]
    image = encode(photo("rocket", size=128))

    def uncompressed(ref: str) -> bool:
        blob = rt.blobs.fetch(ref)
        height, width, _ = decode_png(blob).shape
        return len(blob) > height * (width * 3 + 1)  # every row, its filter byte, and the headers

    upscaled = rt.store.fetch(wait_for_job(_fetcher(client), _submit(client, image, engine="style", style="cartoon",
                                                                      size=128, upscale=2).get_json()["id"])["id"])
    as_is = rt.store.fetch(wait_for_job(_fetcher(client), _submit(client, image, engine="style", style="cartoon",
                                                                   size=128, upscale=1).get_json()["id"])["id"])
    assert upscaled.status.value == as_is.status.value == "succeeded"
    assert uncompressed(upscaled.outputs["normalized"]) and uncompressed(upscaled.outputs["generated"])
    assert not uncompressed(upscaled.outputs["result"])
    assert as_is.outputs["result"] == as_is.outputs["generated"] and not uncompressed(as_is.outputs["generated"])
    assert np.array_equal(decode_png(rt.blobs.fetch(as_is.outputs["generated"])),
                          decode_png(rt.blobs.fetch(upscaled.outputs["generated"])))  # the same pixels either way


def test_an_image_audited_before_keeps_its_score_and_skips_the_model(client, workers):
    image = encode(photo("rocket", size=96))
    params = dict(engine="style", style="sketch", size=96, seed=7)
    first = wait_for_job(_fetcher(client), _submit(client, image, **params).get_json()["id"])
    again = wait_for_job(_fetcher(client), _submit(client, image, **params).get_json()["id"])
    assert first["status"] == again["status"] == "succeeded"
    assert client.get(first["links"]["result"]).data == client.get(again["links"]["result"]).data  # the same bytes
    assert "nsfw_reused" not in first["audit"]  # the classifier ran
    assert again["audit"]["nsfw_reused"] is True and again["audit"]["scores"]["nsfw"] == first["audit"]["scores"]["nsfw"]
    assert again["audit"]["checks"] == first["audit"]["checks"]  # the checks ran afresh, on the same image
    rt = client.application.extensions["pixelmill"]
    other = submit_job(rt, tenant="another-tenant", upload=Upload("photo.png", image), params=JobParams(**params))
    other = wait_for_job(lambda job_id: job_view(rt.store.fetch(job_id)).model_dump(mode="json"), other.id)
    assert other["status"] == "succeeded" and "nsfw_reused" not in other["audit"]  # kept per tenant, as the caches


def test_batch_runs_every_image(client, workers):
    files = [(io.BytesIO(encode(photo(name, size=128))), f"{name}.png") for name in ("astronaut", "coffee", "chelsea")]
    response = client.post("/api/v1/batches", data={"images": files, "style": "sketch"},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    batch = response.get_json()
    assert batch["total"] == 3 and {j["batch_id"] for j in batch["jobs"]} == {batch["id"]}
    for job in batch["jobs"]:
        assert wait_for_job(_fetcher(client), job["id"])["status"] == "succeeded"
    final = client.get(f"/api/v1/batches/{batch['id']}").get_json()
    assert final["status"] == "done" and final["counts"] == {"succeeded": 3}
    page = client.get(f"/batches/{batch['id']}")
    assert page.status_code == 200 and b"3/3 done" in page.data


def test_failed_stage_fails_the_job_with_an_actionable_message(client, workers):
    big = encode(np.asarray(Image.fromarray(photo("astronaut")).resize((1024, 1024))))
    response = _submit(client, big, style="product", upscale=4, size=1024)  # 4096² > the test limit of 5 MP
    job = wait_for_job(_fetcher(client), response.get_json()["id"])
    assert job["status"] == "failed"
    assert job["stages"]["enhance"]["state"] == "stopped"
    assert job["stages"]["audit"]["state"] == "pending"
    assert "smaller" in job["error"]["message"] and job["error"]["message"].startswith("enhance failed")
    assert client.get(job["links"]["self"] + "/result").status_code == 409


def test_redelivered_stage_of_a_finished_job_changes_nothing(client, workers):
    from tasks.stages import encode as encode_task

    job = wait_for_job(_fetcher(client), _submit(client, encode(photo("coffee", size=64)), style="sketch").get_json()["id"])
    before = client.get(job["links"]["self"]).get_json()
    encode_task.si(job["id"]).set(queue="cpu").apply_async()
    for _ in range(10):  # give the worker time to (not) do anything
        threading.Event().wait(0.2)
    after = client.get(job["links"]["self"]).get_json()
    assert after["updated_at"] == before["updated_at"] and after["status"] == "succeeded"


def test_a_handoff_is_the_message_celery_would_publish(redis_server, redis_client):
    """A stage's message pushed inside a transition (tasks.pipeline.stage_message) has the envelope,
    headers and body that Celery's own publish of that task gives, ids apart."""
    from tasks.jobs import Job, JobParams
    from tasks.pipeline import plan_route, send_stage, stage_message
    from tasks.settings import Settings

    queue = "handoff-shape"
    settings = Settings(routes=routes_to(queue))
    job = Job.create(tenant="t", params=JobParams(engine="style", seed=1), input_ref="0" * 64 + ".png")
    redis_client.delete(queue)
    send_stage(job, "enhance", settings)
    celery = json.loads(redis_client.rpop(queue))
    ours = json.loads(stage_message(job, "enhance", plan_route(job, settings)).payload)

    varying = {"id", "root_id", "correlation_id", "reply_to", "delivery_tag"}
    # its own ids, though the message is made from one built once per stage (tasks.pipeline._template)
    again = json.loads(stage_message(job, "enhance", plan_route(job, settings), parent_id="p").payload)
    for message in (ours, again, celery):
        assert message["headers"]["id"] == message["headers"]["root_id"] == message["properties"]["correlation_id"]
    assert again["headers"]["id"] != ours["headers"]["id"] and again["properties"]["delivery_tag"] != \
        ours["properties"]["delivery_tag"]
    assert (ours["headers"]["parent_id"], again["headers"]["parent_id"]) == (None, "p")
    assert ours.keys() == celery.keys()
    assert {k: v for k, v in ours["headers"].items() if k not in varying} == \
        {k: v for k, v in celery["headers"].items() if k not in varying}
    assert ours["headers"]["task"] == "pixelmill.enhance" and ours["headers"]["pixelmill_job_created"] == job.created_at
    assert ours["headers"]["pixelmill_route"] == dict.fromkeys(("encode", "generate", "enhance", "audit"), queue)
    assert {k: v for k, v in ours["properties"].items() if k not in varying} == \
        {k: v for k, v in celery["properties"].items() if k not in varying}
    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(celery["body"])) == \
        [[job.id], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def test_a_finished_stage_has_queued_the_next_one_with_its_done_marker(redis_server, redis_client, workers):
    """With the Redis broker a stage's finish and the next stage's message are one transaction: the
    moment encode is done on a real worker, generate's message is on the queue the job's route names
    (decided at submit, where generate goes to a queue nobody consumes here)."""
    from tasks.settings import Settings
    from web import create_app

    parked = declare_test_queue("handoff-parked")
    redis_client.delete(parked)
    client = create_app(Settings(routes={"generate:style": parked})).test_client()
    response = _submit(client, encode(photo(size=96)), engine="style", style="sketch")
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    deadline = time.monotonic() + 60
    while (job := client.get(f"/api/v1/jobs/{job_id}").get_json())["stages"]["encode"]["state"] != "done":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    try:
        messages = redis_client.lrange(parked, 0, -1)
        assert len(messages) == 1
        envelope = json.loads(messages[0])
        assert envelope["headers"]["task"] == "pixelmill.generate"
        assert envelope["headers"]["pixelmill_route"] == {"encode": "cpu", "generate": parked, "enhance": "cpu",
                                                         "audit": "cpu"}
        assert json.loads(base64.b64decode(envelope["body"]))[0] == [job_id]
        # the record that transition wrote, byte for byte (where generate's compare-and-set starts)
        assert envelope["headers"]["pixelmill_record"].encode() == redis_client.get(f"pixelmill:job:{job_id}")
        assert job["stages"]["generate"]["state"] != "done"
    finally:
        client.post(f"/api/v1/jobs/{job_id}/cancel")
        redis_client.delete(parked)


@pytest.mark.parametrize("meanwhile", ["touch", "cancel"])
def test_a_stage_whose_job_changed_while_its_message_waited_decides_on_the_current_record(
        redis_server, redis_client, workers, meanwhile):
    """A stage's first delivery sends its start ahead, on the record its message carries, and works
    while Redis writes it (tasks.store: start_stage(ahead=True)). Here the job changed while the
    message waited: the start does not take, nothing of the stage is written, and the stage decides
    again on the current record — a harmless change (the reaper's touch): it runs and the job ends
    well with one attempt counted; a cancel: it stops, and nothing runs after it."""
    from tasks.settings import Settings
    from tasks.store import JobStore
    from web import create_app

    parked = declare_test_queue("ahead-parked")
    redis_client.delete(parked)
    client = create_app(Settings(routes={"generate:style": parked})).test_client()
    job_id = _submit(client, encode(photo(size=96)), engine="style", style="sketch").get_json()["id"]
    deadline = time.monotonic() + 60
    while redis_client.llen(parked) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    carried = json.loads(redis_client.lindex(parked, 0))["headers"]["pixelmill_record"].encode()
    store = JobStore(redis_client)
    if meanwhile == "touch":
        store.touch(job_id)
    else:
        client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert redis_client.get(f"pixelmill:job:{job_id}") != carried  # the message's record is stale now
    redis_client.rpoplpush(parked, "cpu")  # delivered as its hand-off queued it: first delivery, no retry
    if meanwhile == "touch":
        job = wait_for_job(_fetcher(client), job_id)
        assert job["status"] == "succeeded", job
        assert [job["stages"][s]["attempts"] for s in ("encode", "generate", "enhance", "audit")] == [1, 1, 1, 1]
    else:
        time.sleep(1.5)  # the worker takes it, and (not) runs it
        assert redis_client.llen("cpu") == 0
        job = store.fetch(job_id)
        assert job.status.value == "canceled"
        assert job.stages["generate"].attempts == 0 and not job.stages["generate"].done
        assert "generated" not in job.outputs and job.stages["enhance"].attempts == 0
