"""Priorities as queues (tasks/priority.py): high before normal before low, promotion by age so
a low job never starves, and a tenant's highest allowed level."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
import redis

from tasks.priority import JOB_CREATED_HEADER, consume_order, job_of, promote_aged, queue_for
from tasks.settings import STAGES, Settings
from tasks.store import store_key
from tests.conftest import encode, photo, routes_to
from tests.faults.cluster import TERMINAL, Cluster

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


def test_a_low_job_still_runs_while_high_jobs_keep_coming(tmp_path, tiny_model):
    """A saturated cpu worker and a stream of high jobs that never lets cpu.high empty: the low job
    waits until the reaper lifts it (older than 2T: straight to the consuming end of cpu.high), then
    runs, and each later stage follows within a pass. T is the shortest the setting allows; the
    default T is checked by the next test."""
    promote_after = Settings.model_fields["priority_promote_after_s"].metadata[0].ge  # 10 s
    cluster = Cluster(tmp_path, broker="redis", model=tiny_model, priority_promote_after_s=promote_after,
                      reaper_interval_s=1, rate_limit_per_minute=100_000)
    broker = redis.Redis.from_url(cluster.redis.url)
    try:
        cluster.start_reaper()
        cluster.start_web()
        cluster.start_worker(name="busy", queues="cpu", concurrency=1)  # one slot, cpu.high first
        image = encode(photo("astronaut", size=96))

        def submit(level: str) -> str:
            return cluster.submit(image, style="sketch", size=64, priority=level)["id"]

        highs = [submit("high") for _ in range(48)]
        low, submitted = submit("low"), time.monotonic()
        started = None  # when the low job was first seen out of the queue
        fewest_waiting = None  # the shortest cpu.high seen while the low job was still queued
        deadline = submitted + 40
        while (job := cluster.job(low))["status"] not in TERMINAL:
            assert time.monotonic() < deadline, f"the low job starved: {job}; logs in {tmp_path}"
            waiting = broker.llen("cpu.high")  # the list kombu keeps for the queue cpu.high
            if job["status"] == "queued":
                fewest_waiting = waiting if fewest_waiting is None else min(fewest_waiting, waiting)
            elif started is None:
                started = time.monotonic()
            if waiting < 48:  # the stream never stops: every high job keeps one message in cpu.high, and
                # a loaded machine (the fault suite runs beside this one) must not drain it between two
                # looks: a 64 px stage takes ~2 ms, and 16 waiting with 8 more at a time was drained once
                highs += [submit("high") for _ in range(24)]
            time.sleep(0.05)
        ended = time.monotonic()
        still_high = sum(1 for i in highs[-8:] if cluster.job(i)["status"] not in TERMINAL)
    finally:
        cluster.stop()
    assert job["status"] == "succeeded", job
    assert fewest_waiting, "cpu.high ran empty while the low job waited: the worker was not saturated"
    assert still_high, "the high jobs stopped coming before the low job ended"
    assert len(highs) > 48, "no high job came after the low one"
    started = started or ended
    assert started - submitted >= 2 * promote_after - 1, \
        f"it started {started - submitted:.1f} s after submit: before the guard lifted it"
    assert {job["stages"][s]["queue"] for s in STAGES} == {"cpu"}
    assert ended - started < 12, \
        f"its stages took {ended - started:.1f} s once lifted: each later one should wait one pass (1 s) at most"


def test_with_the_default_settings_a_starved_job_ends_well_within_its_target(redis_server):
    """The shipped promotion age and reaper interval, not shortened ones: under a stream of high
    jobs that never lets the high queue empty, a low and a normal job each run their four stages
    through the reaper's passes (the real Lua script on a real Redis) and end with a fifth of their
    SLA target left for the running. Each stage is enqueued just after a pass: the worst case."""
    fields = Settings.model_fields
    promote_after, interval = fields["priority_promote_after_s"].default, fields["reaper_interval_s"].default
    targets = fields["sla_target_s"].default_factory()
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/7")  # a db no worker consumes
    for level in ("low", "normal"):
        client.flushdb()
        queue = queue_for("cpu", level)
        client.lpush(queue, _message(0.0, "starved"))  # submitted at t = 0
        ran, now = 0, 0.0
        while ran < len(STAGES):
            assert now < targets[level], f"a starved {level} job never got through"
            now += interval  # the next reaper pass
            client.lpush("cpu.high", _message(now, "high"))  # a high job arrives: never an empty queue
            promote_aged(client, older_than_s=promote_after, now=now)
            raw = client.lindex("cpu.high", -1)
            if raw is not None and job_of(raw) == "starved":  # at the consuming end: the worker takes it next
                client.rpop("cpu.high")
                ran += 1
                if ran < len(STAGES):  # its chain sends the next stage to its own level again
                    client.lpush(queue, _message(0.0, "starved"))
        assert now <= 0.8 * targets[level], (
            f"with the defaults a starved {level} job ends its stages {now:.0f} s after submit: its target is "
            f"{targets[level]:.0f} s (PIXELMILL_PRIORITY_PROMOTE_AFTER_S={promote_after})")
    client.flushdb()


def test_a_job_older_than_twice_the_age_climbs_two_levels_in_one_pass(redis_server):
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/7")
    client.flushdb()
    client.lpush("gpu.low", _message(1000.0, "old"))
    assert promote_aged(client, older_than_s=100, now=1201.0) == {"gpu.low": 1, "gpu": 1}
    assert [job_of(m) for m in client.lrange("gpu.high", 0, -1)] == ["old"]
    assert client.llen("gpu.low") == client.llen("gpu") == 0
    client.flushdb()


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


def test_a_queue_is_one_list_whatever_priority_a_message_asks(redis_client):
    """Priority is the queue (cpu.high, cpu, cpu.low); a message's own priority is not used, so
    kombu keeps one list per queue (priority_steps [0]): a worker's BRPOP names each queue once,
    and a depth count reads one list."""
    from tasks.celery_app import app
    from tests.conftest import declare_test_queue

    queue = declare_test_queue("priority-steps")  # no worker consumes it
    redis_client.delete(queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9)))
    try:
        app.send_task("pixelmill.noop-for-this-test", queue=queue, priority=9)
        assert redis_client.llen(queue) == 1
        assert not redis_client.exists(*(f"{queue}\x06\x16{p}" for p in (3, 6, 9)))
        with app.connection_for_read() as conn:
            assert conn.default_channel.queue_declare(queue, passive=True).message_count == 1
    finally:
        redis_client.delete(queue)
