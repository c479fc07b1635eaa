"""Priorities as queues (tasks/priority.py): high before normal before low, promotion by age so
a low job never starves, and a tenant's highest allowed level."""

from __future__ import annotations

import base64
import io
import json

import pytest
import redis

from tasks.priority import JOB_CREATED_HEADER, consume_order, promote_aged
from tasks.store import store_key
from tests.conftest import encode, photo, routes_to
from tests.faults.cluster import Cluster

pytestmark = pytest.mark.integration


def test_a_worker_of_a_queue_takes_its_levels_highest_first():
    assert consume_order(["cpu", "gpu", "io"]) == ["cpu.high", "gpu.high", "cpu", "gpu", "io", "cpu.low", "gpu.low"]
    assert consume_order(["gpu.high"]) == ["gpu.high"]  # a worker kept for urgent work


def test_a_high_job_runs_before_every_waiting_low_job(tmp_path, tiny_model):
    cluster = Cluster(tmp_path, broker="redis", model=tiny_model)
    try:
        cluster.start_web()
        image = encode(photo("astronaut", size=96))
        lows = [cluster.submit(image, style="sketch", size=64, priority="low")["id"] for _ in range(5)]
        high = cluster.submit(image, style="sketch", size=64, priority="high")["id"]
        cluster.start_worker(name="busy", queues="cpu,gpu", concurrency=1)  # one slot: they all wait for it
        jobs = cluster.wait_all([*lows, high], timeout_s=120)
    finally:
        cluster.stop()
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
    order = sorted(jobs, key=lambda i: jobs[i]["finished_at"])
    assert order[0] == high, f"the high job finished {order.index(high) + 1}th of {len(order)}"
    assert {jobs[i]["stages"]["encode"]["queue"] for i in jobs} == {"cpu"}  # recorded (and priced) as cpu


def _message(created: float, job_id: str) -> bytes:
    body = base64.b64encode(json.dumps([[job_id], {}, {}]).encode()).decode()
    return json.dumps({"body": body, "headers": {JOB_CREATED_HEADER: created}}).encode()


def test_jobs_that_waited_long_move_up_a_level(redis_server):
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/7")  # a db no worker consumes
    client.flushdb()
    now = 10_000.0
    # kombu LPUSHes and BRPOPs: the right end is the next to run. Oldest at the right.
    for job_id, created in (("old-low-1", now - 500), ("old-low-2", now - 400), ("young-low", now - 10)):
        client.lpush("cpu.low", _message(created, job_id))
    client.lpush("cpu", _message(now - 5, "young-normal"))
    moved = promote_aged(client, older_than_s=300, now=now)
    assert moved == {"cpu.low": 2}
    assert [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in client.lrange("cpu", 0, -1)] == \
        ["young-normal", "old-low-2", "old-low-1"]  # promoted to the consuming end: old-low-1 runs next
    assert client.llen("cpu.low") == 1
    assert promote_aged(client, older_than_s=300, now=now) == {}  # the young one stays, the normal ones too
    assert promote_aged(client, older_than_s=300, now=now + 100) == {}  # normal leaves for high only at 2T (600 s)
    assert promote_aged(client, older_than_s=300, now=now + 150) == {"cpu": 1}  # old-low-1 is 650 s old: high
    assert client.llen("cpu.high") == 1
    client.flushdb()


def test_a_tenant_asks_no_higher_than_the_admin_allows(redis_server):
    from tasks.settings import Settings
    from web import create_app

    app = create_app(Settings(routes=routes_to("priority-parked")))
    rt = app.extensions["pixelmill"]
    rt.tenants.save_max_priority("local", "normal")
    try:
        client = app.test_client()

        def submit(priority: str):
            return client.post("/api/v1/jobs", content_type="multipart/form-data",
                               data={"image": (io.BytesIO(encode(photo(size=64))), "p.png"), "priority": priority})

        refused = submit("high")
        assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "priority_not_allowed"
        assert "--max-priority" in refused.get_json()["error"]["message"]
        assert submit("normal").status_code == 202 and submit("low").status_code == 202
    finally:
        rt.redis.delete(store_key("tenant", "local", "max_priority"))
