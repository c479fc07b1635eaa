"""Fault injection against real processes: every job submitted ends in a terminal state,
none is lost, none is done twice. Run alone with `pytest -m faults`.

Each scenario runs on a private cluster (its own redis-server with AOF, workers, gunicorn),
with Redis as the broker and again with RabbitMQ as the broker (Redis kept for the job store
and cache)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import encode, photo
from tests.faults.cluster import Cluster, rabbitmq_available

pytestmark = pytest.mark.faults

BROKERS = [
    "redis",
    pytest.param("rabbitmq", marks=pytest.mark.skipif(not rabbitmq_available(), reason="no RabbitMQ here")),
]
# A diffusion job long enough to be hit mid-generate: 150 steps of the tiny model take 0.75 s on
# this machine's faster days, 1.5–3 s on its slower ones (60 steps, 0.3 s, once finished before a
# test could see it running). Progress is reported every 0.25 s, so "step >= 2" is seen from then on.
SLOW = dict(engine="diffusion", size=64, steps=150, strength=1.0, prompt="a photo")


@pytest.fixture(scope="module", params=BROKERS)
def shared_cluster(request, tmp_path_factory, tiny_model):
    """One cluster per broker for the scenarios below (Redis, web, io worker, event receiver);
    each scenario brings and takes away its own stage workers."""
    c = Cluster(tmp_path_factory.mktemp(f"cluster-{request.param}"), broker=request.param, model=tiny_model)
    c.start_web()
    c.start_io_worker()
    c.start_reaper()
    c.listen_for_events()
    yield c
    c.stop()


@pytest.fixture
def cluster(shared_cluster):
    yield shared_cluster
    shared_cluster.stop_stage_workers()


def _report(name: str, submitted: list[str], jobs: dict[str, dict], cluster: Cluster) -> dict[str, int]:
    """submitted = terminal, lost = 0, duplicates = 0: each succeeded job has one result and
    exactly one job.completed event (distinct webhook-ids at a real receiver)."""
    terminal = [j for j in jobs.values() if j["status"] in {"succeeded", "failed", "blocked", "canceled"}]
    succeeded = [j["id"] for j in terminal if j["status"] == "succeeded"]
    events = cluster.receiver.wait_completed(succeeded) if cluster.receiver else {}
    counts = {
        "submitted": len(submitted),
        "terminal": len(terminal),
        "succeeded": len(succeeded),
        "lost": len(submitted) - len(terminal),
        "duplicates": sum(max(0, n - 1) for n in events.values()),
        "missing_events": sum(n == 0 for n in events.values()),
    }
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    for job in jobs.values():
        if job["status"] != "succeeded":
            print(f"  {job['id']}: {job['status']} {job['error']} attempts="
                  f"{ {s: st['attempts'] for s, st in job['stages'].items()} }")
    return counts


def test_worker_killed_mid_generate_loses_nothing(cluster):
    worker = cluster.start_worker(name="doomed")
    image = encode(photo("astronaut", size=96))
    ids = [cluster.submit(image, seed=i, **SLOW)["id"] for i in range(3)]
    cluster.wait_for(ids[0], lambda j: (j.get("progress") or {}).get("step", 0) >= 2)
    cluster.kill(worker)  # SIGKILL: no warm shutdown, the message stays unacknowledged
    worker.wait()
    cluster.start_worker(name="rescuer")
    jobs = cluster.wait_all(ids, timeout_s=150)
    counts = _report(f"SIGKILL mid-generate, {cluster.broker}", ids, jobs, cluster)
    assert counts == {"submitted": 3, "terminal": 3, "succeeded": 3, "lost": 0, "duplicates": 0, "missing_events": 0}
    assert jobs[ids[0]]["stages"]["generate"]["attempts"] == 2  # re-delivered once, after the kill
    for job in jobs.values():
        assert requests.get(job["links"]["result"], timeout=10).ok


def test_poison_job_fails_after_bounded_redeliveries(tmp_path, tiny_model):
    cluster = Cluster(tmp_path, broker="rabbitmq" if rabbitmq_available() else "redis", model=tiny_model,
                      max_stage_attempts=2)
    try:
        cluster.start_web()
        cluster.start_io_worker()
        job_id = cluster.submit(encode(photo("coffee", size=96)), seed=1, **SLOW)["id"]
        for attempt in (1, 2):  # the job kills its worker twice (as a crashing input would)
            worker = cluster.start_worker(name=f"victim{attempt}")
            cluster.wait_for(job_id, lambda j, a=attempt: j["stages"]["generate"]["attempts"] == a
                             and (j.get("progress") or {}).get("step", 0) >= 1, timeout_s=90)
            cluster.kill(worker)
            worker.wait()
        cluster.start_worker(name="last")
        job = cluster.wait_all([job_id], timeout_s=90)[job_id]
        assert job["status"] == "failed" and job["error"]["code"] == "poison"
        assert "started 2 times without finishing" in job["error"]["message"]
    finally:
        cluster.stop()


def test_warm_shutdown_finishes_the_running_task(cluster):
    worker = cluster.start_worker(name="leaving")
    image = encode(photo("chelsea", size=96))
    ids = [cluster.submit(image, seed=i, **SLOW)["id"] for i in range(3)]
    cluster.wait_for(ids[0], lambda j: (j.get("progress") or {}).get("step", 0) >= 2)
    cluster.warm_stop(worker)
    assert worker.wait(timeout=60) == 0
    cluster.start_worker(name="next")
    jobs = cluster.wait_all(ids, timeout_s=150)
    counts = _report(f"SIGTERM mid-generate, {cluster.broker}", ids, jobs, cluster)
    assert counts == {"submitted": 3, "terminal": 3, "succeeded": 3, "lost": 0, "duplicates": 0, "missing_events": 0}
    for job in jobs.values():  # nothing ran twice
        assert all(stage["attempts"] == 1 for stage in job["stages"].values()), job["stages"]


def test_redis_restart_mid_batch(cluster):
    cluster.start_worker(name="steady", concurrency=2)
    image = encode(photo("astronaut", size=64))
    files = [("images", (f"{i}.png", image)) for i in range(50)]
    batch = requests.post(f"{cluster.base_url}/api/v1/batches", files=files, timeout=60,
                          data={"style": "sketch", "size": "64", "webhook_url": cluster.receiver.url,
                                "webhook_events": "job.completed"}).json()
    ids = [job["id"] for job in batch["jobs"]]
    deadline = time.monotonic() + 60
    while sum(cluster.job(i)["status"] == "succeeded" for i in ids[:15]) < 5:
        assert time.monotonic() < deadline, "the batch never got going"
        time.sleep(0.3)

    observed: dict[str, object] = {}

    def while_down() -> None:
        started = time.monotonic()
        health = requests.get(f"{cluster.base_url}/healthz", timeout=15)
        api = requests.get(f"{cluster.base_url}/api/v1/jobs/{ids[0]}", timeout=15)
        observed.update(health=health.status_code, api=api.status_code, body=api.json(),
                        seconds=time.monotonic() - started)

    cluster.restart_redis(down_s=3, while_down=while_down)
    time.sleep(3)
    restarted = cluster.supervise()
    print(f"\n[Redis restart, {cluster.broker}] workers restarted by the supervisor: {restarted or 'none'}")
    assert observed["health"] == 503 and observed["api"] == 503, observed
    assert observed["body"]["error"]["code"] == "store_unavailable"
    assert observed["seconds"] < 10  # answered, not hung
    jobs = cluster.wait_all(ids, timeout_s=240)
    counts = _report(f"Redis restart mid-batch of 50, {cluster.broker}", ids, jobs, cluster)
    assert counts == {"submitted": 50, "terminal": 50, "succeeded": 50, "lost": 0, "duplicates": 0,
                      "missing_events": 0}


def test_cancel_queued_and_running(cluster):
    image = encode(photo("coffee", size=96))
    running = cluster.submit(image, seed=3, **SLOW)["id"]
    queued = cluster.submit(image, seed=4, **SLOW)["id"]
    cluster.start_worker(name="canceller")
    cluster.wait_for(running, lambda j: (j.get("progress") or {}).get("step", 0) >= 2)
    for job_id in (queued, running):
        response = requests.post(f"{cluster.base_url}/api/v1/jobs/{job_id}/cancel", timeout=10)
        assert response.status_code == 200 and response.json()["status"] == "canceled"
    assert requests.post(f"{cluster.base_url}/api/v1/jobs/{queued}/cancel", timeout=10).status_code == 409
    time.sleep(2)  # the running one stops at its next step and nothing runs after it
    jobs = cluster.wait_all([running, queued])
    assert all(j["status"] == "canceled" for j in jobs.values())
    assert jobs[running]["stages"]["enhance"]["attempts"] == 0
    assert jobs[queued]["stages"]["generate"]["attempts"] == 0


def test_reaper_expires_late_jobs_and_requeues_stuck_ones(tmp_path, tiny_model):
    cluster = Cluster(tmp_path, broker="redis", model=tiny_model, stage_deadline_s=2, reaper_interval_s=1)
    try:
        cluster.start_web()
        cluster.start_io_worker()
        image = encode(photo("astronaut", size=64))
        late = requests.post(f"{cluster.base_url}/api/v1/jobs", files={"image": ("a.png", image)},
                             data={"style": "sketch", "deadline_s": "1"}, timeout=10).json()["id"]
        stuck = cluster.submit(image, style="cartoon")["id"]
        # Lose the stuck job's message, as a crash between start and ack could: drop the queue,
        # and mark its first stage as started long ago.
        import redis as redis_lib

        from tasks.store import JobStore
        client = redis_lib.Redis.from_url(cluster.redis.url)
        client.delete("cpu")
        JobStore(client).start_stage(stuck, "encode", queue="cpu", worker="gone@host")
        time.sleep(2.5)
        reaper = cluster.spawn("reaper", [sys.executable, "-m", "stack.cli", "reaper"])
        cluster.start_worker(name="after")
        jobs = cluster.wait_all([late, stuck], timeout_s=60)
        assert jobs[late]["status"] == "failed" and jobs[late]["error"]["code"] == "expired"
        assert jobs[stuck]["status"] == "succeeded"
        assert jobs[stuck]["stages"]["encode"]["attempts"] == 2
        reaper.send_signal(signal.SIGTERM)
    finally:
        cluster.stop()


def test_dead_webhook_receiver_never_delays_other_jobs(cluster):
    """A receiver that hangs on every request, for longer than any stage takes."""
    import socket
    import threading

    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(64)  # accepts connections, never answers
    stop = threading.Event()
    threading.Thread(target=lambda: stop.wait(120), daemon=True).start()
    cluster.start_worker(name="busy")
    image = encode(photo("chelsea", size=64))
    started = time.monotonic()
    import json

    hooked = [requests.post(f"{cluster.base_url}/api/v1/jobs", files={"image": ("p.png", image)}, timeout=30,
                            data={"params": json.dumps({"style": "sketch", "seed": i}),
                                  "webhook_url": f"http://127.0.0.1:{hanging.getsockname()[1]}/hook"}).json()["id"]
              for i in range(3)]
    plain = [requests.post(f"{cluster.base_url}/api/v1/jobs", files={"image": ("p.png", image)}, timeout=30,
                           data={"params": json.dumps({"style": "sketch", "seed": 10 + i})}).json()["id"]
             for i in range(3)]
    jobs = cluster.wait_all(hooked + plain, timeout_s=60)
    elapsed = time.monotonic() - started
    print(f"\n[dead receiver, {cluster.broker}] 6 jobs done in {elapsed:.1f} s with 3 deliveries hanging")
    assert all(j["status"] == "succeeded" for j in jobs.values())
    assert elapsed < 30  # a delivery attempt alone may hang for the webhook timeout; no stage waited on it
    stop.set()
    hanging.close()
