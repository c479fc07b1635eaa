"""Live updates over Server-Sent Events, read over real HTTP (werkzeug's threaded server) from
a real Redis, with real workers where a job runs: several viewers of one job, a batch, previews,
tenants, and the hub's one subscription surviving a Redis restart."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import torch
from werkzeug.serving import make_server

from tasks.jobs import Batch, Job, JobParams, new_id
from tasks.live import channel_for
from web.live_hub import RESYNC, LiveHub, pubsub_client
from tasks.pipeline import enqueue
from tasks.settings import Settings
from tests.conftest import encode, photo
from workers.preview import preview_png
from stack.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration

STATUSES = ["queued", "encoding", "generating", "enhancing", "auditing", "succeeded"]


# --- a real server and a real SSE client --------------------------------------------------------

@contextmanager
def serve(app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture
def base(app) -> Iterator[str]:
    with serve(app) as url:
        yield url


class SseViewer(threading.Thread):
    """Reads one event stream to its end: events as (name, data), comments, the retry hint."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = urlsplit(url), headers or {}
        self.status: int | None = None
        self.content_type = ""
        self.body = b""
        self.events: list[tuple[str, dict]] = []
        self.comments: list[str] = []
        self.retry: int | None = None
        self.first_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=60)
            conn.request("GET", f"{self.url.path}?{self.url.query}", headers={"Accept": "text/event-stream",
                                                                          **self.headers})
            response = conn.getresponse()
            self.status, self.content_type = response.status, response.getheader("Content-Type", "")
            if response.status != 200:
                self.body = response.read()
                return
            name, data = "message", []
            while line := response.readline():
                line = line.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("retry:"):
                    self.retry = int(line[6:])
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    self.events.append((name, json.loads("\n".join(data))))
                    self.first_event.set()
                    name, data = "message", []
            conn.close()
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self.error = e
        finally:
            self.first_event.set()

    def finish(self, timeout_s: float = 90) -> "SseViewer":
        self.join(timeout_s)
        assert not self.is_alive(), f"the stream did not close within {timeout_s} s: {self.events[-3:]}"
        assert self.error is None, self.error
        return self

    def named(self, name: str) -> list[dict]:
        return [data for event, data in self.events if event == name]


def watch(url: str, n: int = 1, headers: dict[str, str] | None = None) -> list[SseViewer]:
    """n viewers, each connected and past its snapshot (so subscribed) when this returns."""
    viewers = [SseViewer(url, headers) for _ in range(n)]
    for viewer in viewers:
        viewer.start()
    for viewer in viewers:
        assert viewer.first_event.wait(30), "no snapshot within 30 s"
        assert viewer.error is None, viewer.error
    return viewers


def create_job(rt, *, tenant: str = "local", batch_id: str | None = None, **params) -> Job:
    """A job written to the store as submit_job writes it, but not enqueued yet: the test
    connects its viewers first, so they see every transition."""
    ref = rt.blobs.save(encode(photo("astronaut", size=96)), ext="png")
    job = Job.create(tenant=tenant, params=JobParams(seed=3, **params), input_ref=ref, input_name="astronaut.png",
                     batch_id=batch_id)
    if batch_id is None:
        rt.store.create(job)
    return job


def dedupe(values: list) -> list:
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


# --- whole jobs on real workers -----------------------------------------------------------------

def test_style_job_reaches_every_viewer_in_order_and_the_streams_close(app, base, client, workers):
    rt = app.extensions["pixelmill"]
    job = create_job(rt, engine="style", style="sketch", size=128)
    viewers = watch(f"{base}/api/v1/jobs/{job.id}/events", n=5)
    enqueue(job, rt.settings)
    expected_keys = set(client.get(f"/api/v1/jobs/{job.id}").get_json())
    for viewer in viewers:
        viewer.finish()
        assert viewer.status == 200 and viewer.content_type.startswith("text/event-stream")
        assert viewer.retry and viewer.retry > 0
        name, snapshot = viewer.events[0]
        assert name == "job" and snapshot["status"] == "queued" and set(snapshot) == expected_keys  # GET's shape
        jobs = viewer.named("job")
        assert dedupe([j["status"] for j in jobs]) == STATUSES  # every transition, in commit order
        final = jobs[-1]
        assert final["stages"]["audit"]["state"] == "done" and final["audit"]["verdict"] == "pass"
        assert final["links"]["result"] == f"{base}/api/v1/jobs/{job.id}/result"
        assert viewer.events[-1] == ("end", {"reason": "finished", "status": "succeeded"})
    result = client.get(f"/api/v1/jobs/{job.id}/result")
    assert result.status_code == 200 and result.mimetype == "image/png"


def test_diffusion_job_streams_progress_of_its_steps(app, base, workers):
    rt = app.extensions["pixelmill"]
    job = create_job(rt, engine="diffusion", prompt="a lighthouse", steps=12, strength=1.0, size=64)
    viewers = watch(f"{base}/jobs/{job.id}/events", n=3)  # the page's path (session auth)
    enqueue(job, rt.settings)
    for viewer in viewers:
        viewer.finish()
        order = [(name, data.get("status") or data.get("stage")) for name, data in viewer.events]
        assert dedupe([s for name, s in order if name == "job"]) == STATUSES, viewer.events
        progress = viewer.named("progress")
        assert progress, "no progress event"
        assert {p["job_id"] for p in progress} == {job.id} and {p["stage"] for p in progress} == {"generate"}
        steps = [p["step"] for p in progress]
        assert steps == sorted(steps) and steps[-1] == progress[-1]["steps"] == 12
        # progress arrives while the job is generating: after that event, before enhancing
        names = [f"{name}:{s}" for name, s in order]
        first, last = names.index("progress:generate"), len(names) - 1 - names[::-1].index("progress:generate")
        assert names.index("job:generating") < first and last < names.index("job:enhancing")


# --- without workers: the store drives the job ---------------------------------------------------

def test_progress_preview_and_cancel_reach_the_viewer(app, base, client):
    rt = app.extensions["pixelmill"]
    job = create_job(rt, engine="diffusion", prompt="x", steps=10, strength=1.0, size=64)
    (viewer,) = watch(f"{base}/api/v1/jobs/{job.id}/events")
    assert client.get(f"/api/v1/jobs/{job.id}/preview.png").status_code == 404  # none yet
    rt.store.start_stage(job.id, "encode", queue="gpu", worker="test")
    rt.store.save_progress(job.id, stage="generate", step=3, steps=10)
    png = preview_png(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)))
    assert rt.store.save_preview(job.id, png, step=3, steps=10)
    served = None
    deadline = time.monotonic() + 10
    while served is None and time.monotonic() < deadline:  # the viewer's event names the URL to fetch
        previews = [d for e, d in list(viewer.events) if e == "preview"]
        if previews:
            served = client.get(urlsplit(previews[0]["url"]).path)
        time.sleep(0.05)
    assert served is not None and served.status_code == 200 and served.data == png
    assert served.headers["Cache-Control"] == "no-store"
    rt.store.cancel(job.id)
    viewer.finish(20)
    assert [e for e, _ in viewer.events] == ["job", "job", "progress", "preview", "job", "end"]
    assert viewer.events[2][1] == {"job_id": job.id, "stage": "generate", "step": 3, "steps": 10}
    assert viewer.events[3][1]["url"].startswith(f"{base}/api/v1/jobs/{job.id}/preview.png?v=")
    assert viewer.events[4][1]["status"] == "canceled" and viewer.events[4][1]["error"]["code"] == "canceled"
    assert client.get(f"/api/v1/jobs/{job.id}/preview.png").status_code == 404  # ended: no preview


def test_one_progress_report_carries_the_preview_and_answers_a_cancel(app, base, client):
    rt = app.extensions["pixelmill"]
    job = create_job(rt, engine="diffusion", prompt="x", steps=10, strength=1.0, size=64)
    (viewer,) = watch(f"{base}/api/v1/jobs/{job.id}/events")
    rt.store.start_stage(job.id, "encode", queue="gpu", worker="test")
    png = preview_png(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)))
    assert rt.store.save_progress(job.id, stage="generate", step=4, steps=10, preview=png) is False  # running
    assert client.get(f"/api/v1/jobs/{job.id}/preview.png").data == png
    assert rt.store.fetch_progress(job.id) == {"stage": "generate", "step": 4, "steps": 10,
                                               "at": rt.store.fetch_progress(job.id)["at"]}
    rt.store.cancel(job.id)
    assert rt.store.save_progress(job.id, stage="generate", step=5, steps=10) is True  # the run stops on this
    viewer.finish(20)
    assert [e for e, _ in viewer.events][:4] == ["job", "job", "progress", "preview"]
    assert viewer.events[3][1]["url"].startswith(f"{base}/api/v1/jobs/{job.id}/preview.png?v=")


def test_batch_stream_follows_each_member_and_the_counts(app, base):
    rt = app.extensions["pixelmill"]
    batch_id = new_id()
    jobs = [create_job(rt, batch_id=batch_id) for _ in range(2)]
    rt.store.create_batch(Batch(id=batch_id, tenant="local", job_ids=[j.id for j in jobs]), jobs)
    viewers = watch(f"{base}/api/v1/batches/{batch_id}/events", n=2)
    first, second = jobs
    rt.store.start_stage(first.id, "encode", queue="cpu", worker="test")
    rt.store.save_progress(first.id, stage="generate", step=1, steps=4)
    rt.store.cancel(first.id)
    rt.store.fail(second.id, code="stage_failed", message="boom")
    for viewer in viewers:
        viewer.finish(20)
        assert [e for e, _ in viewer.events] == ["batch", "job", "progress", "job", "batch", "job", "batch", "end"]
        snapshot = viewer.events[0][1]
        assert snapshot["total"] == 2 and [j["id"] for j in snapshot["jobs"]] == [first.id, second.id]
        assert [d["status"] for d in viewer.named("job")] == ["encoding", "canceled", "failed"]
        assert viewer.events[2][1]["job_id"] == first.id
        assert [(b["done"], b["status"]) for b in viewer.named("batch")[1:]] == [(1, "running"), (2, "done")]
        assert viewer.named("batch")[-1]["counts"] == {"canceled": 1, "failed": 1}


def test_an_ended_job_gets_its_snapshot_and_the_stream_closes(app, base):
    rt = app.extensions["pixelmill"]
    job = create_job(rt)
    rt.store.cancel(job.id)
    (viewer,) = watch(f"{base}/api/v1/jobs/{job.id}/events")
    viewer.finish(10)
    assert [e for e, _ in viewer.events] == ["job", "end"] and viewer.events[0][1]["status"] == "canceled"


def test_unknown_job_is_404_json(base):
    (viewer,) = watch(f"{base}/api/v1/jobs/nope/events")
    viewer.finish(10)
    assert viewer.status == 404 and json.loads(viewer.body)["error"]["code"] == "not_found"


def test_another_tenants_viewer_gets_404(redis_server):
    from web import create_app

    secure = create_app(Settings(auth_enabled=True))
    secure.config["TESTING"] = True
    rt = secure.extensions["pixelmill"]
    keys = {}
    for tenant in ("alpha", "beta"):
        _, plaintext = rt.tenants.create_key(tenant=tenant)
        keys[tenant] = {"Authorization": f"Bearer {plaintext}"}
    job = create_job(rt, tenant="alpha")
    batch_id = new_id()
    member = create_job(rt, tenant="alpha", batch_id=batch_id)
    rt.store.create_batch(Batch(id=batch_id, tenant="alpha", job_ids=[member.id]), [member])
    with serve(secure) as url:
        paths = [f"/api/v1/jobs/{job.id}/events", f"/api/v1/batches/{batch_id}/events",
                 f"/api/v1/jobs/{job.id}/preview.png"]
        for path in paths:
            (other,) = watch(url + path, headers=keys["beta"])
            assert other.finish(10).status == 404, path
            assert json.loads(other.body)["error"]["code"] == "not_found"
            (anonymous,) = watch(url + path)
            assert anonymous.finish(10).status == 401
        owner = watch(url + paths[0], headers=keys["alpha"])[0]
        assert owner.status == 200 and owner.events[0][1]["id"] == job.id
        rt.store.cancel(job.id)
        owner.finish(10)
        rt.store.cancel(member.id)


# --- the hub: one subscription per process, across Redis restarts ---------------------------------

def test_hubs_fan_out_and_resubscribe_after_a_redis_restart(tmp_path: Path):
    server = RedisServer(data_dir=tmp_path / "redis", port=free_port()).start()
    hubs = [LiveHub(pubsub_client(server.url), backoff_max_s=0.5) for _ in range(2)]  # two web processes
    publisher = redis.Redis.from_url(server.url)
    channel = channel_for("job", "j1")
    try:
        viewers = [hub.watch([channel]) for hub in hubs for _ in range(3)]
        assert all(v.wait_ready(5) for v in viewers)
        assert publisher.publish(channel, json.dumps({"type": "progress", "step": 1})) == 2  # one subscriber per hub
        assert all(v.get(5) == {"type": "progress", "step": 1} for v in viewers)

        server.stop()
        time.sleep(0.5)
        server.start()
        for viewer in viewers:  # resubscribed, and told to re-read what they may have missed
            assert viewer.get(15) is RESYNC
        assert all(hub.reconnects >= 1 for hub in hubs)
        assert publisher.publish(channel, json.dumps({"type": "progress", "step": 2})) == 2
        assert all(v.get(5) == {"type": "progress", "step": 2} for v in viewers)

        for viewer in viewers:
            viewer.close()
        deadline = time.monotonic() + 5
        while publisher.pubsub_numsub(channel)[0][1] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.pubsub_numsub(channel)[0][1] == 0  # the last viewer gone: unsubscribed
        assert all(hub.viewer_count() == 0 for hub in hubs)
    finally:
        for hub in hubs:
            hub.stop()
        publisher.close()
        server.stop()


def test_a_slow_viewer_is_told_to_resync_instead_of_blocking_the_hub(tmp_path: Path):
    server = RedisServer(data_dir=tmp_path / "redis", port=free_port()).start()
    hub = LiveHub(pubsub_client(server.url), queue_size=4)
    publisher = redis.Redis.from_url(server.url)
    channel = channel_for("batch", "b1")
    try:
        slow, fast = hub.watch([channel]), hub.watch([channel])
        assert slow.wait_ready(5)
        for step in range(10):
            publisher.publish(channel, json.dumps({"type": "progress", "step": step}))
            assert fast.get(5)["step"] == step  # the fast one keeps up while the slow one's queue overflows
        assert slow.get(1) is RESYNC and slow.get(0.2) is None  # dropped what was queued, re-reads instead
    finally:
        hub.stop()
        publisher.close()
        server.stop()
