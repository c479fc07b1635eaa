"""Quality levels (tasks/quality.py): a level fills in defaults the caller did not send and picks
the class of worker — the queue — that serves its diffusion stages, and the record says so."""

from __future__ import annotations

import io

import pytest

from tasks.jobs import JobParams
from tasks.quality import apply_quality, queue_dtype
from tests.conftest import encode, photo, wait_for_job

pytestmark = pytest.mark.integration

LEVELS = {"draft": {"steps": 4, "size": 64, "queue": "cpu"}, "best": {"steps": 12, "size": 96, "queue": "gpu"}}


def test_a_level_fills_in_only_what_was_not_sent():
    assert apply_quality(JobParams(engine="diffusion", quality="draft"), LEVELS).steps == 4
    sent = apply_quality(JobParams(engine="diffusion", quality="draft", steps=30), LEVELS)
    assert (sent.steps, sent.size) == (30, 64)
    assert apply_quality(JobParams(engine="diffusion"), LEVELS) == JobParams(engine="diffusion")


def test_a_queue_runs_at_its_own_dtype_else_its_bases_else_the_workers():
    from pydantic import ValidationError

    from tasks.settings import Settings

    dtypes = Settings(queue_dtypes={"gpu": "FP16", "gpu.low": "fp32", "gpu-exact": "fp32"}).queue_dtypes
    assert dtypes == {"gpu": "fp16", "gpu.low": "fp32", "gpu-exact": "fp32"}
    assert [queue_dtype(q, queue_dtypes=dtypes, default="bf16") for q in ("gpu.high", "gpu", "gpu.low", "gpu-exact",
                                                                          "cpu.high", None)] == \
        ["fp16", "fp16", "fp32", "fp32", "bf16", "bf16"]
    with pytest.raises(ValidationError, match="queue_dtypes"):
        Settings(queue_dtypes={"gpu": "int8"})


def test_a_draft_job_is_served_by_the_worker_class_its_level_names(redis_server, workers, tiny_model):
    from tasks.settings import Settings
    from web import create_app

    app = create_app(Settings(quality_levels=LEVELS))
    client = app.test_client()
    answer = client.post("/api/v1/jobs", content_type="multipart/form-data", data={
        "image": (io.BytesIO(encode(photo(size=96))), "p.png"), "engine": "diffusion", "quality": "draft",
        "strength": "0.5", "prompt": "a photo"})
    assert answer.status_code == 202, answer.get_json()
    job = wait_for_job(lambda i: client.get(f"/api/v1/jobs/{i}").get_json(), answer.get_json()["id"])
    assert job["status"] == "succeeded", job
    assert job["params"]["quality"] == "draft" and (job["params"]["steps"], job["params"]["size"]) == (4, 64)
    assert job["stages"]["encode"]["queue"] == job["stages"]["generate"]["queue"] == "cpu"  # not the gpu queue


def test_one_worker_runs_each_job_at_the_dtype_of_the_queue_it_came_from(tmp_path, tiny_model):
    """PIXELMILL_QUEUE_DTYPES: a worker of every level of gpu runs gpu.high at bf16 and the rest at
    fp32, each job's record says which, and a latent or result made at one dtype never serves the
    other (the keys carry it), while a repeat at the same dtype is served from the cache."""
    import json

    import redis

    from tests.faults.cluster import Cluster

    cluster = Cluster(tmp_path, broker="redis", model=tiny_model, queue_dtypes=json.dumps({"gpu.high": "bf16",
                      "gpu": "fp32"}), cpu_backend="torch", cpu_precision="f32", torch_threads=1)
    try:
        cluster.start_web()
        worker = cluster.start_worker(name="mixed", queues="cpu,gpu", concurrency=1)
        image = encode(photo("astronaut", size=96))
        params = dict(engine="diffusion", prompt="a photo", size=64, steps=4, strength=0.5, seed=7)
        jobs = {}
        for name, priority in (("high", "high"), ("normal", "normal"), ("again", "normal")):  # one after another
            job_id = cluster.submit(image, priority=priority, **params)["id"]
            jobs[name] = cluster.wait_all([job_id], timeout_s=90)[job_id]
        log = cluster._log_of(worker).read_text(errors="replace")
        from tasks.heartbeat import fetch_workers

        beats = [w for w in fetch_workers(redis.Redis.from_url(cluster.redis.url)) if w.hostname.startswith("mixed")]
    finally:
        cluster.stop()
    assert {j["status"] for j in jobs.values()} == {"succeeded"}, jobs
    for name, dtype in (("high", "bf16"), ("normal", "fp32"), ("again", "fp32")):
        stages = jobs[name]["stages"]
        assert stages["encode"]["dtype"] == stages["generate"]["dtype"] == dtype, (name, stages)
        assert "dtype" not in stages["enhance"] and stages["generate"]["queue"] == "gpu"
    assert jobs["high"]["stages"]["generate"]["cache"]["backend"] == "torch-bf16"
    assert not jobs["normal"]["stages"]["encode"]["cached"], "an fp32 job was served the bf16 job's latent"
    assert not jobs["normal"]["stages"]["generate"]["cached"], "an fp32 job was served the bf16 job's result"
    assert jobs["again"]["stages"]["encode"]["cached"] and jobs["again"]["stages"]["generate"]["cached"]
    warmed = [line for line in log.splitlines() if "resident on cpu" in line]
    assert any("(bf16)" in line for line in warmed) and any("(fp32)" in line for line in warmed), warmed  # preloaded
    assert any(b.queue_dtypes and b.queue_dtypes["gpu.high"] == "bf16" and b.queue_dtypes["gpu.low"] == "fp32"
               for b in beats), beats  # the heartbeat says which queue runs at which dtype
