"""Metrics and cost accounting without a broker: histogram and percentile math, what one stage
and one job transition write to (a real) Redis, exactly-once terminal counts, cost math."""

from __future__ import annotations

import logging
import random

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.cost import Cost, job_cost, per_image, stage_cost_usd, total_cost
from tasks.errors import InvalidTransition
from tasks.jobs import Batch, Job, JobParams, JobStatus
from tasks.metrics import (BUCKETS, MINUTE_TTL_S, Aggregate, Histogram, bucket_index, fetch_active, fetch_minutes,
                           fetch_totals, metrics_key, minute_of, record_webhook, stage_metrics, window)
from tasks.present import batch_payload, job_payload
from tasks.settings import Settings
from tasks.store import JobStore
from stack.redis_server import free_port

PRICES = {"cpu": 0.10, "gpu": 2.50, "io": 0.02}


@pytest.fixture
def metrics_redis(redis_server):
    """A database of its own on the session's Redis: these tests read totals that workers of other
    tests also write (in database 0)."""
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/13")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


# --- histogram math --------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "index"), [
    (0.0, 0), (0.01, 0), (0.0101, 1), (0.3, 5), (1.0, 6), (1.0001, 7), (1800.0, len(BUCKETS) - 1),
    (1800.5, len(BUCKETS)), (86400.0, len(BUCKETS)),
])
def test_a_latency_falls_in_the_first_bucket_whose_bound_holds_it(seconds, index):
    assert bucket_index(seconds) == index


def test_buckets_cover_ten_ms_to_thirty_minutes_in_order():
    assert BUCKETS[0] == 0.01 and BUCKETS[-1] == 1800.0
    assert list(BUCKETS) == sorted(set(BUCKETS))


def test_quantiles_interpolate_inside_their_bucket_as_prometheus_does():
    hist = Histogram()
    for i in range(1, 101):  # 0.01 … 1.00 s
        hist.observe(i / 100)
    # 50 values are ≤ 0.5 (bucket bound): the median lands exactly on it; p99 is 49/50 into (0.5, 1].
    assert hist.quantile(0.5) == pytest.approx(0.5)
    assert hist.quantile(0.99) == pytest.approx(0.99)
    assert hist.quantile(0.0) == pytest.approx(0.0)
    assert hist.count == 100 and hist.sum == pytest.approx(50.5)
    cumulative = hist.cumulative()
    assert cumulative[-1] == (float("inf"), 100)
    assert [n for _, n in cumulative] == sorted(n for _, n in cumulative)


def test_quantile_estimates_stay_inside_the_bucket_of_the_true_value():
    rng = random.Random(7)
    samples = [rng.lognormvariate(0.0, 1.5) for _ in range(5000)]  # 10 ms … minutes, long tail
    hist = Histogram()
    for s in samples:
        hist.observe(s)
    ordered = sorted(samples)
    for q in (0.5, 0.9, 0.99):
        true = ordered[int(q * len(ordered)) - 1]
        i = bucket_index(true)
        lower, upper = (BUCKETS[i - 1] if i else 0.0), BUCKETS[i]
        assert lower <= hist.quantile(q) <= upper, (q, true, hist.quantile(q))


def test_quantiles_of_nothing_and_of_the_overflow_bucket():
    assert Histogram().quantile(0.5) is None
    slow = Histogram()
    slow.observe(4000.0)
    assert slow.quantile(0.5) == BUCKETS[-1]  # known only to be above the last bound


def test_histograms_merge_bucket_by_bucket():
    a, b = Histogram(), Histogram()
    a.observe(0.02)
    b.observe(0.02)
    b.observe(5.0)
    merged = Histogram().merge(a).merge(b)
    assert merged.count == 3 and merged.counts[bucket_index(0.02)] == 2 and merged.sum == pytest.approx(5.04)
    assert a.count == 1  # the sources are untouched


# --- what a stage writes ---------------------------------------------------------------------

def test_a_stage_records_latency_device_time_and_cost_in_totals_and_its_minute(metrics_redis):
    now = 1_800_000_000.0
    with metrics_redis.pipeline() as pipe:  # the job store queues these on its finish transition
        stage_metrics(pipe, stage="generate", queue="gpu", seconds=0.3, device_s=0.2, prices=PRICES, now=now)
        stage_metrics(pipe, stage="generate", queue="gpu", seconds=2.0, device_s=2.0, prices=PRICES, now=now + 61)
        stage_metrics(pipe, stage="audit", queue="cpu", seconds=0.05, device_s=0.05, prices=PRICES, now=now)
        pipe.execute()

    totals = fetch_totals(metrics_redis)
    gen = totals.latency[("generate", "gpu")]
    assert gen.count == 2 and gen.counts[bucket_index(0.3)] == 1 and gen.counts[bucket_index(2.0)] == 1
    assert gen.sum == pytest.approx(2.3)
    assert totals.device_s[("generate", "gpu")] == pytest.approx(2.2)
    assert totals.usd["gpu"] == pytest.approx(2.2 * 2.50 / 3600)
    assert totals.usd["cpu"] == pytest.approx(0.05 * 0.10 / 3600)

    minutes = fetch_minutes(metrics_redis, minutes=3, now=now + 61)
    assert [m for m, _ in minutes] == [minute_of(now) - 1, minute_of(now), minute_of(now) + 1]
    first, second = minutes[1][1], minutes[2][1]
    assert first.completed("generate") == 1 and first.completed("audit") == 1 and second.completed("generate") == 1
    assert minutes[0][1].completed("generate") == 0
    assert window(minutes).stage_histogram("generate").count == 2
    ttl = metrics_redis.ttl(metrics_key("minute", str(minute_of(now))))
    assert 0 < ttl <= MINUTE_TTL_S


def test_a_transition_adds_counter_groups_in_its_script(metrics_redis, caplog):
    """Counters travel as groups (tasks.transition.Writes.add_counts): every field of a group is
    added to every hash of it, an int by HINCRBY, a float by HINCRBYFLOAT; the same field added
    twice is sent once; a hash of the wrong type is reported and the record is written all the same."""
    from tasks.transition import Transition, Writes

    metrics_redis.set("record", b"{}")
    metrics_redis.set("not-a-hash", "x")
    writes = Writes()
    writes.add_counts(("h1", "h2"), {"n": 1, "us": 1500})
    writes.add_counts(("h1", "h2"), {"n": 2, "usd": 0.25})
    writes.add_counts(("not-a-hash", "h3"), {"n": 1})
    assert writes.counts[("h1", "h2")] == {"n": 3, "us": 1500, "usd": 0.25}
    result = Transition(metrics_redis).apply("record", b"{}", b'{"v":1}', writes)
    assert result.applied and metrics_redis.get("record") == b'{"v":1}'
    for key in ("h1", "h2"):
        assert metrics_redis.hgetall(key) == {b"n": b"3", b"us": b"1500", b"usd": b"0.25"}
    assert metrics_redis.hgetall("h3") == {b"n": b"1"}
    assert len(result.errors) == 1 and "not-a-hash n" in result.errors[0] and "WRONGTYPE" in result.errors[0]


def test_sums_are_whole_microseconds_and_the_float_fields_before_them_still_count():
    agg = Aggregate.parse({b"lat:encode:cpu:0": b"3", b"lat_us:encode:cpu": b"1500000", b"lat_sum:encode:cpu": b"0.5",
                           b"dev_us:encode:cpu": b"250000", b"dev:encode:cpu": b"0.25",
                           b"sla:total:normal:4": b"1", b"sla_us:total:normal": b"2000000", b"sla_sum:total:normal": b"1.0"})
    assert agg.latency[("encode", "cpu")].sum == pytest.approx(2.0)
    assert agg.device_s[("encode", "cpu")] == pytest.approx(0.5)
    assert agg.sla[("total", "normal")].sum == pytest.approx(3.0)


class _Refusing:
    """A pipeline that fails every command it is given."""

    def __getattr__(self, name):
        def refuse(*args, **kwargs):
            raise redis.ConnectionError(f"{name}: gone")
        return refuse


def test_recording_never_raises_when_redis_is_away(caplog):
    gone = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    with caplog.at_level(logging.WARNING, logger="tasks.metrics"):
        stage_metrics(_Refusing(), stage="encode", queue="cpu", seconds=0.1, device_s=0.1, prices=PRICES)
        record_webhook(gone, "delivered")
    assert "could not record encode" in caplog.text and "could not record a webhook" in caplog.text


def test_webhook_outcomes_are_counted(metrics_redis):
    for outcome in ("delivered", "retry", "retry", "dead"):
        record_webhook(metrics_redis, outcome)
    assert fetch_totals(metrics_redis).webhooks == {"delivered": 1, "retry": 2, "dead": 1}


def test_unknown_fields_are_ignored_when_parsing():
    agg = Aggregate.parse({b"lat:encode:cpu:3": b"2", b"jobs:succeeded": b"4", b"lat:bad": b"x", b"mystery": b"1"})
    assert agg.latency[("encode", "cpu")].count == 2 and agg.jobs == {"succeeded": 4}


# --- what a job's transitions write ----------------------------------------------------------

def _job(store: JobStore) -> Job:
    return store.create(Job.create(tenant="t", params=JobParams(), input_ref="blob"))


def _run(store: JobStore, job: Job, *, end: JobStatus = JobStatus.SUCCEEDED) -> Job:
    for stage, queue in (("encode", "cpu"), ("generate", "gpu"), ("enhance", "cpu"), ("audit", "cpu")):
        store.start_stage(job.id, stage, queue=queue, worker="w")
        job = store.finish_stage(job.id, stage, outputs={}, device_s=1.5,
                                 end=end if stage == "audit" else None)
    return job


def test_terminal_states_are_counted_once_and_active_jobs_by_state(metrics_redis):
    store = JobStore(metrics_redis, ttl_s=600)
    done, failed, waiting = _job(store), _job(store), _job(store)
    store.start_stage(failed.id, "encode", queue="cpu", worker="w")
    assert fetch_active(metrics_redis, max_age_s=600)["encoding"] == 1

    _run(store, done)
    store.fail(failed.id, code="x", message="boom")
    with pytest.raises(InvalidTransition):  # terminal states never change, and are never counted twice
        store.cancel(done.id)
    with pytest.raises(InvalidTransition):
        store.fail(failed.id, code="x", message="again")

    totals = fetch_totals(metrics_redis)
    assert totals.created == 3
    assert totals.jobs == {"succeeded": 1, "failed": 1}
    assert totals.images == {"cpu": 1, "gpu": 1}  # the succeeded job used both queues
    active = fetch_active(metrics_redis, max_age_s=600)
    assert active["queued"] == 1 and sum(active.values()) == 1  # only `waiting` is still in flight
    store.cancel(waiting.id)
    assert sum(fetch_active(metrics_redis, max_age_s=600).values()) == 0
    assert fetch_totals(metrics_redis).jobs["canceled"] == 1


def test_an_active_entry_of_a_job_that_expired_unfinished_is_not_counted(metrics_redis):
    store = JobStore(metrics_redis, ttl_s=600)
    _job(store)
    assert fetch_active(metrics_redis, max_age_s=600)["queued"] == 1
    assert fetch_active(metrics_redis, max_age_s=600, now=10**10)["queued"] == 0


# --- cost --------------------------------------------------------------------------------------

def test_stage_cost_is_device_seconds_times_the_hourly_price():
    assert stage_cost_usd(3600, "gpu", PRICES) == pytest.approx(2.50)
    assert stage_cost_usd(36, "cpu", PRICES) == pytest.approx(0.001)
    assert stage_cost_usd(10, None, PRICES) == 0.0 and stage_cost_usd(10, "tpu", PRICES) == 0.0
    assert stage_cost_usd(-1, "cpu", PRICES) == 0.0


def test_a_job_costs_what_its_stages_used_per_queue(metrics_redis):
    store = JobStore(metrics_redis, ttl_s=600)
    job = _run(store, _job(store))
    cost = job_cost(job, PRICES)
    assert cost.device_seconds == {"cpu": 4.5, "gpu": 1.5}
    assert cost.usd == pytest.approx((4.5 * 0.10 + 1.5 * 2.50) / 3600)
    payload = job_payload(job, prices=PRICES)
    assert payload["cost"] == {"usd": round(cost.usd, 10), "device_seconds": {"cpu": 4.5, "gpu": 1.5}}
    assert payload["stages"]["generate"]["device_s"] == 1.5
    assert job_payload(Job.create(tenant="t", params=JobParams(), input_ref="b"))["cost"] == \
        {"usd": 0.0, "device_seconds": {}}


def test_a_batch_reports_its_total_and_the_cost_per_delivered_image(metrics_redis):
    store = JobStore(metrics_redis, ttl_s=600)
    jobs = [_job(store) for _ in range(3)]
    jobs = [_run(store, jobs[0]), _run(store, jobs[1]), _run(store, jobs[2], end=JobStatus.BLOCKED)]
    cost = batch_payload(Batch(id="b", tenant="t", job_ids=[j.id for j in jobs]), jobs)["cost"]
    one = job_cost(jobs[0], Settings().price_per_hour).usd
    assert cost["images"] == 2
    assert cost["usd"] == pytest.approx(3 * one, rel=1e-6)
    assert cost["per_image_usd"] == pytest.approx(1.5 * one, rel=1e-6)  # the blocked job's work is paid for too


def test_totals_and_per_image():
    total = total_cost([Cost(0.5, {"cpu": 10.0}), Cost(1.0, {"cpu": 5.0, "gpu": 2.0})])
    assert total.usd == 1.5 and total.device_seconds == {"cpu": 15.0, "gpu": 2.0}
    assert per_image(1.5, 3) == 0.5 and per_image(1.5, 0) is None


def test_prices_have_defaults_per_queue_and_come_from_the_environment(monkeypatch):
    assert set(Settings().price_per_hour) == {"cpu", "gpu", "io"}
    assert Settings().price_per_hour["gpu"] > Settings().price_per_hour["cpu"] > Settings().price_per_hour["io"]
    monkeypatch.setenv("PIXELMILL_PRICE_PER_HOUR", '{"cpu": 0.08, "gpu": 1.9}')
    assert Settings().price_per_hour == {"cpu": 0.08, "gpu": 1.9}


# --- service levels per priority -------------------------------------------------------------------

def test_service_levels_per_priority_and_breaches_past_the_target(metrics_redis):
    store = JobStore(metrics_redis, ttl_s=600, sla_target_s={"high": 60.0, "low": 3600.0})
    slow = Job.create(tenant="t", params=JobParams(priority="high"), input_ref="blob")
    slow.created_at -= 120  # submitted two minutes ago: over the high target of 60 s
    quick_low = Job.create(tenant="t", params=JobParams(priority="low"), input_ref="blob")
    for job in (store.create(slow), store.create(quick_low)):
        _run(store, job)
    failed = store.create(Job.create(tenant="t", params=JobParams(priority="high"), input_ref="blob"))
    store.fail(failed.id, code="x", message="not a delivered job: no service level")

    totals = fetch_totals(metrics_redis)
    high_total, high_wait = totals.sla[("total", "high")], totals.sla[("wait", "high")]
    assert high_total.count == 1 and 120 <= high_total.sum < 130
    assert high_wait.count == 1 and high_wait.sum <= high_total.sum  # its stages took a little of it
    assert totals.sla[("total", "low")].count == 1 and totals.sla[("total", "low")].sum < 10
    assert totals.breaches == {"high": 1}
    assert 60 < high_total.quantile(0.95) <= 300  # the bucket the two minutes fall in
