"""Faults with `make run`'s own settings (no shortened timeouts): a killed worker's stages come
back in seconds through their leases (tasks/leases.py), not after Redis' visibility timeout
(3600 s) or the reaper's stage deadline (2100 s)."""

from __future__ import annotations

import time

import pytest

from stack.supervisor import plan_worker
from tasks.settings import Settings
from tests.conftest import encode, photo
from tests.faults.cluster import Cluster

pytestmark = pytest.mark.faults

DEFAULTS = Settings()
SLOW = dict(engine="diffusion", size=64, steps=150, strength=1.0, prompt="a photo")


@pytest.fixture
def cluster(tmp_path, tiny_model):
    c = Cluster(tmp_path, broker="redis", model=tiny_model, short_limits=False)
    assert c.env.get("PIXELMILL_VISIBILITY_TIMEOUT") is None and DEFAULTS.visibility_timeout == 3600
    c.start_web()
    c.start_reaper()
    yield c
    c.stop()


def start_gpu_worker(cluster: Cluster):
    """The gpu worker as `make run` starts it (stack/supervisor.py): one process, a threads pool
    feeding the dynamic batcher."""
    plan = plan_worker("gpu", gpu_max_batch=DEFAULTS.gpu_max_batch)
    return cluster.start_worker(name="gpu", queues=plan.queues, concurrency=plan.concurrency, pool=plan.pool,
                                extra_env=plan.env)


def test_killed_gpu_worker_jobs_succeed_within_a_minute(cluster):
    cluster.start_worker(name="cpu", queues="cpu", concurrency=1)
    cluster.start_io_worker()
    receiver = cluster.listen_for_events()
    worker = start_gpu_worker(cluster)
    image = encode(photo("astronaut", size=96))
    ids = [cluster.submit(image, seed=i, **SLOW)["id"] for i in range(4)]
    cluster.wait_for(ids[0], lambda j: (j.get("progress") or {}).get("step", 0) >= 2)
    cluster.kill(worker)  # as the OOM killer does: the whole process, its messages left unacknowledged
    worker.wait()
    killed_at = time.monotonic()
    start_gpu_worker(cluster)  # as the supervisor does
    jobs = cluster.wait_all(ids, timeout_s=60 - (time.monotonic() - killed_at))
    took = time.monotonic() - killed_at
    print(f"\n[gpu worker SIGKILL, defaults] all {len(ids)} jobs succeeded {took:.1f} s after the kill")
    assert {j["status"] for j in jobs.values()} == {"succeeded"}, {i: j["status"] for i, j in jobs.items()}
    assert took < 60
    events = receiver.wait_completed(ids, timeout_s=30)
    assert events == {i: 1 for i in ids}  # one job.completed each: the late redeliveries did nothing


def test_killed_io_worker_loses_no_event_and_sends_none_twice(cluster):
    cluster.start_worker(name="cpu", queues="cpu,gpu", concurrency=2)
    receiver = cluster.listen_for_events(delay_s=1.5)  # deliveries stay in flight a while
    io = cluster.start_io_worker()
    image = encode(photo("coffee", size=96))
    ids = [cluster.submit(image, engine="style", style="sketch", size=64)["id"] for _ in range(6)]
    deadline = time.monotonic() + 60
    while receiver.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.requests > 0, "no delivery started"
    cluster.kill(io)  # mid-POST: the receiver is still answering
    io.wait()
    killed_at = time.monotonic()
    cluster.start_io_worker()
    events = receiver.wait_completed(ids, timeout_s=120)
    print(f"\n[io worker SIGKILL, defaults] job.completed per job {sorted(events.values())} "
          f"within {time.monotonic() - killed_at:.1f} s of the kill")
    assert events == {i: 1 for i in ids}  # every event arrived, once per webhook-id
