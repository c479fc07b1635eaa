"""Webhook logic without a broker: the retry policy, event emission in the job store's own
transaction, batch.completed exactly once, filters and fan-out, and delivery attempts
against a fake sender (nothing is sent anywhere)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from safety.outbound import OutboundError, Response
from tasks.events import OUTBOX, PROCESSING, JobEvent, job_events
from tasks.jobs import Batch, Job, JobParams, JobStatus
from tasks.settings import get_settings
from tasks.store import JobStore
from tasks.backoff import backoff_s
from tasks.webhooks.deliver import Policy, judge, parse_retry_after, run_delivery
from tasks.webhooks.dispatch import drain, handle_event, targets
from tasks.webhooks.endpoints import redeliver, subscribe
from tasks.webhooks.errors import DeliveryConflict, InvalidWebhook, WebhookUrlRefused
from tasks.webhooks.models import Endpoint, Subscription, SubscriptionRequest, parse_events
from tasks.webhooks.store import WebhookStore

POLICY = Policy(timeout_s=2, max_attempts=4, backoff_base_s=2, backoff_max_s=60, max_response_bytes=1024,
                allow_private=False, endpoint_concurrency=2)
PUBLIC = "http://93.184.216.34/hook"  # a public literal: passes the guard; the fake sender never connects


# --- policy -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "tries", "outcome", "disable"), [
    (200, 1, "delivered", False), (204, 4, "delivered", False),
    (500, 1, "retry", False), (503, 3, "retry", False), (429, 1, "retry", False), (None, 1, "retry", False),
    (500, 4, "dead", False), (None, 4, "dead", False),
    (400, 1, "dead", False), (401, 1, "dead", False), (404, 1, "dead", False), (422, 1, "dead", False),
    (301, 1, "dead", False), (302, 1, "dead", False), (410, 1, "dead", True),
])
def test_judge(status, tries, outcome, disable):
    verdict = judge(status=status, tries=tries, policy=POLICY, error="timed out" if status is None else None)
    assert (verdict.outcome, verdict.disable) == (outcome, disable)
    assert (verdict.retry_in is not None) == (outcome == "retry")


def test_backoff_doubles_with_jitter_and_a_cap():
    limits = {"base_s": POLICY.backoff_base_s, "cap_s": POLICY.backoff_max_s}
    assert [backoff_s(n, **limits, rand=lambda: 1.0) for n in range(0, 7)] == [2, 4, 8, 16, 32, 60, 60]
    assert [backoff_s(n, **limits, rand=lambda: 0.0) for n in range(0, 3)] == [1, 2, 4]


def test_retry_after_is_honoured_and_capped():
    assert judge(status=429, tries=1, policy=POLICY, retry_after=7).retry_in == 7
    assert judge(status=503, tries=1, policy=POLICY, retry_after=3600).retry_in == 60
    assert parse_retry_after("120") == 120
    assert 9 <= parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))) <= 11
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize(("value", "expected"), [
    (None, ("job.completed",)), ("", ("job.completed",)),
    ("job.failed,job.started", ("job.started", "job.failed")),
    ('["batch.completed"]', ("batch.completed",)), (["job.blocked", "job.canceled"], ("job.blocked", "job.canceled")),
    ("*", ("job.started", "job.completed", "job.failed", "job.blocked", "job.canceled", "batch.completed")),
])
def test_parse_events(value, expected):
    assert parse_events(value, default=("job.completed",)) == expected


@pytest.mark.parametrize("value", ["job.done", '["job.completed", 3]', "[nope"])
def test_parse_events_refuses_unknown_names(value):
    with pytest.raises(InvalidWebhook):
        parse_events(value, default=())


# --- emission in the job store's transaction ------------------------------------------------------

def _job(tenant: str, batch_id: str | None = None) -> Job:
    return Job.create(tenant=tenant, params=JobParams(seed=1), input_ref="0" * 64 + ".png", batch_id=batch_id)


def _outbox(redis_client, subject: str) -> list[JobEvent]:
    raws = redis_client.lrange(OUTBOX, 0, -1) + redis_client.lrange(PROCESSING, 0, -1)
    return [e for e in map(JobEvent.from_json, raws) if e.subject == subject]


def test_events_follow_transitions():
    job = _job("t")
    job.status = JobStatus.ENCODING
    assert [e.type for e in job_events(JobStatus.QUEUED, job)] == ["job.started"]
    assert job_events(JobStatus.ENCODING, job) == []  # a re-delivered stage: no second job.started
    job.status = JobStatus.CANCELED
    assert [e.type for e in job_events(JobStatus.QUEUED, job)] == ["job.canceled"]  # never started
    job.status = JobStatus.BLOCKED
    assert [e.type for e in job_events(JobStatus.AUDITING, job)] == ["job.blocked"]


def _listen(redis_client, subject_id: str) -> None:
    """A subscription of the job (or batch): someone wants its events, so the store writes them."""
    WebhookStore(redis_client, ttl_s=60).save_subscription(subject_id, Subscription(endpoint_id="ep", events=("*",)))


def test_the_store_writes_events_with_the_change(redis_client):
    told = []
    store = JobStore(redis_client, ttl_s=60, on_events=told.append)
    job = _job("emit")
    _listen(redis_client, job.id)
    store.create(job)
    store.start_stage(job.id, "encode", queue="cpu", worker="w")
    store.start_stage(job.id, "encode", queue="cpu", worker="w")  # re-delivery
    store.start_stage(job.id, "generate", queue="cpu", worker="w")
    for stage in ("enhance", "audit"):
        store.start_stage(job.id, stage, queue="cpu", worker="w")
    store.finish_stage(job.id, "audit", outputs={}, end=JobStatus.BLOCKED, audit={"verdict": "block"})
    events = _outbox(redis_client, job.id)
    assert [e.type for e in events] == ["job.started", "job.blocked"]
    assert events[0].snapshot["status"] == "encoding" and events[1].snapshot["status"] == "blocked"
    assert len({e.id for e in events}) == 2
    assert [[e.type for e in batch] for batch in told] == [["job.started"], ["job.blocked"]]


def test_a_record_with_any_text_goes_through_a_transition_intact(redis_client):
    store = JobStore(redis_client, ttl_s=60)
    job = Job.create(tenant="unicode", params=JobParams(engine="diffusion", prompt='café ☕ "quoted" \\ 中文 \n'),
                     input_ref="0" * 64 + ".png", input_name="Ünïcode 🖼.png")
    _listen(redis_client, job.id)
    store.create(job)
    store.start_stage(job.id, "encode", queue="cpu", worker="w")
    failed = store.fail(job.id, code="x", message="the engine said: «non» — 失败")
    assert store.fetch(job.id) == failed and failed.params["prompt"] == 'café ☕ "quoted" \\ 中文 \n'
    events = _outbox(redis_client, job.id)
    assert [e.type for e in events] == ["job.started", "job.failed"]
    assert events[1].snapshot == failed.to_dict() and events[1].snapshot["error"]["message"].endswith("失败")


def test_events_nobody_listens_to_are_not_written(rt, redis_client):
    told = []
    tenant = f"quiet-{uuid.uuid4().hex[:6]}"
    store = JobStore(redis_client, ttl_s=60, on_events=told.append)
    job = store.create(_job(tenant))
    store.start_stage(job.id, "encode", queue="cpu", worker="w")
    assert _outbox(redis_client, job.id) == [] and told == []  # no outbox entry, no io worker woken
    _endpoint(rt, tenant, events=["job.completed"])  # a standing endpoint from now on
    for stage in ("generate", "enhance", "audit"):
        store.start_stage(job.id, stage, queue="cpu", worker="w")
    store.finish_stage(job.id, "audit", outputs={}, end=JobStatus.SUCCEEDED, audit={"verdict": "pass"})
    assert [e.type for e in _outbox(redis_client, job.id)] == ["job.completed"]
    assert [[e.type for e in batch] for batch in told] == [["job.completed"]]


def test_batch_completed_fires_exactly_once_however_jobs_race(redis_client):
    store = JobStore(redis_client, ttl_s=60)
    batch_id = uuid.uuid4().hex
    jobs = [_job("race", batch_id) for _ in range(8)]
    _listen(redis_client, batch_id)
    store.create_batch(Batch(id=batch_id, tenant="race", job_ids=[j.id for j in jobs]), jobs)
    threads = [threading.Thread(target=(store.cancel if i % 2 else lambda jid: store.fail(jid, code="x", message="y")),
                                args=(job.id,)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [e.type for e in _outbox(redis_client, batch_id)] == ["batch.completed"]
    assert sorted(e.type for job in jobs for e in _outbox(redis_client, job.id)) == ["job.canceled"] * 4 + ["job.failed"] * 4


# --- fan-out, filters, attempts ---------------------------------------------------------------------

@pytest.fixture
def rt(redis_client):
    settings = get_settings().model_copy(update={"webhook_allow_private": False})
    return SimpleNamespace(redis=redis_client, settings=settings, store=JobStore(redis_client, ttl_s=300),
                           webhooks=WebhookStore(redis_client, ttl_s=300))


def _endpoint(rt, tenant: str, *, url: str = PUBLIC, events=("job.started", "job.completed"), standing=True):
    return rt.webhooks.create_endpoint(Endpoint.create(tenant=tenant, url=url, events=list(events),
                                                       secret="whsec_" + "A" * 44, standing=standing))


def _event(tenant: str, type_: str, job: Job) -> JobEvent:
    return JobEvent.create(type=type_, tenant=tenant, subject=job.id, job_id=job.id, batch_id=job.batch_id,
                           snapshot=job.to_dict())


def test_targets_respect_filters_tenants_and_dedupe(rt):
    tenant = f"fan-{uuid.uuid4().hex[:6]}"
    completed_only = _endpoint(rt, tenant, url="http://93.184.216.34/a", events=["job.completed"])
    _endpoint(rt, "someone-else", url="http://93.184.216.34/b", events=["job.completed"])
    disabled = _endpoint(rt, tenant, url="http://93.184.216.34/c", events=["job.completed"])
    rt.webhooks.update_endpoint(disabled.id, lambda e: setattr(e, "disabled", True))
    job = _job(tenant)
    own = subscribe(rt.webhooks, rt.settings, tenant=tenant,
                    request=SubscriptionRequest(url="http://93.184.216.34/own", events=("job.started",)))
    rt.webhooks.save_subscription(job.id, own.subscription)
    assert own.secret and own.secret.startswith("whsec_")
    same_url = subscribe(rt.webhooks, rt.settings, tenant=tenant,
                         request=SubscriptionRequest(url="http://93.184.216.34/own", events=("job.started",)))
    assert same_url.endpoint.id == own.endpoint.id and same_url.secret is None  # shown once only

    assert [e.id for e in targets(rt.webhooks, _event(tenant, "job.started", job))] == [own.endpoint.id]
    assert [e.id for e in targets(rt.webhooks, _event(tenant, "job.completed", job))] == [completed_only.id]
    assert targets(rt.webhooks, _event(tenant, "job.failed", job)) == []

    dup = _job(tenant)  # a job naming the URL of a standing endpoint gets one delivery, not two
    rt.webhooks.save_subscription(dup.id, Subscription(own.endpoint.id, ("job.completed",)))
    standing_same_url = _endpoint(rt, tenant, url="http://93.184.216.34/own", events=["job.completed"])
    assert [e.id for e in targets(rt.webhooks, _event(tenant, "job.completed", dup))] == [
        completed_only.id, standing_same_url.id]


def test_subscribe_refuses_forbidden_urls(rt):
    with pytest.raises(WebhookUrlRefused, match="loopback"):
        subscribe(rt.webhooks, rt.settings, tenant="t", request=SubscriptionRequest(url="http://2130706433/"))


class FakeSender:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, target, *, body, headers, timeout_s, max_response_bytes):
        self.calls.append({"target": target, "body": body, "headers": headers})
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        status, extra = (answer, {}) if isinstance(answer, int) else answer
        return Response(status=status, headers=extra, body=b"nope" if status >= 300 else b"", truncated=False,
                        latency_s=0.01, address="93.184.216.34")


def _delivered_job(rt, tenant, endpoint, *types):
    job = _job(tenant)
    rt.store.create(job)
    deliveries = []
    for type_ in types:
        deliveries += handle_event(rt, _event(tenant, type_, job), enqueue=lambda *a: None)
    return job, deliveries


def _run(rt, delivery_id, sender, *, policy=POLICY):
    current = rt.webhooks.fetch_delivery(delivery_id)
    rt.webhooks.update_delivery(delivery_id, lambda d: setattr(d, "next_attempt_at", time.time()))
    return run_delivery(rt.webhooks, policy, delivery_id=delivery_id, schedule=current.schedule, send=sender)


def test_retries_then_success_keeps_one_webhook_id(rt):
    tenant = f"retry-{uuid.uuid4().hex[:6]}"
    endpoint = _endpoint(rt, tenant, events=["job.completed"])
    _, (delivery,) = _delivered_job(rt, tenant, endpoint, "job.completed")
    sender = FakeSender(500, OutboundError("no answer", timeout=True), (429, {"retry-after": "5"}), 200)
    steps = [_run(rt, delivery.id, sender) for _ in range(4)]
    assert [s.retry_in is not None for s in steps] == [True, True, True, False]
    assert steps[2].retry_in == 5  # Retry-After
    final = rt.webhooks.fetch_delivery(delivery.id)
    assert final.status == "delivered" and final.attempts_total == 4
    assert [a.status_code for a in final.attempts] == [500, None, 429, 200]
    assert all(a.latency_ms is not None for a in final.attempts) and "no answer" in final.attempts[1].error
    assert {c["headers"]["webhook-id"] for c in sender.calls} == {delivery.event_id}
    assert json.loads(sender.calls[0]["body"])["type"] == "job.completed"


def test_giving_up_dead_letters_and_redelivery_starts_a_new_round(rt):
    tenant = f"dead-{uuid.uuid4().hex[:6]}"
    endpoint = _endpoint(rt, tenant, events=["job.completed"])
    _, (delivery,) = _delivered_job(rt, tenant, endpoint, "job.completed")
    sender = FakeSender(503, 503, 503, 503)
    for _ in range(4):
        _run(rt, delivery.id, sender)
    dead = rt.webhooks.fetch_delivery(delivery.id)
    assert dead.status == "dead" and "gave up after 4 attempts" in dead.last_error
    assert [d.id for d in rt.webhooks.dead_letters(tenant)] == [delivery.id]

    enqueued = []
    redeliver(rt.webhooks, tenant=tenant, delivery_id=delivery.id, enqueue=lambda *a: enqueued.append(a))
    with pytest.raises(DeliveryConflict):
        redeliver(rt.webhooks, tenant=tenant, delivery_id=delivery.id, enqueue=lambda *a: None)
    assert rt.webhooks.dead_letters(tenant) == [] and enqueued
    _run(rt, delivery.id, FakeSender(200))
    again = rt.webhooks.fetch_delivery(delivery.id)
    assert again.status == "delivered" and again.attempts_total == 5


def test_410_disables_the_endpoint_and_4xx_is_not_retried(rt):
    tenant = f"gone-{uuid.uuid4().hex[:6]}"
    endpoint = _endpoint(rt, tenant, events=["job.started", "job.completed"])
    _, (first, second) = _delivered_job(rt, tenant, endpoint, "job.started", "job.completed")
    step = _run(rt, first.id, FakeSender(410))
    assert rt.webhooks.fetch_delivery(first.id).status == "dead"
    assert rt.webhooks.fetch_endpoint(endpoint.id).disabled
    assert step.wake == [(second.id, 0)]  # the next event of the job is woken at once
    _run(rt, second.id, FakeSender(200))
    assert "disabled" in rt.webhooks.fetch_delivery(second.id).last_error  # never sent to a gone receiver

    other = _endpoint(rt, tenant, url="http://93.184.216.34/other", events=["job.completed"])
    _, (bad,) = _delivered_job(rt, tenant, other, "job.completed")
    _run(rt, bad.id, FakeSender(400))
    assert rt.webhooks.fetch_delivery(bad.id).status == "dead"


def test_events_of_one_job_go_out_in_order(rt):
    tenant = f"order-{uuid.uuid4().hex[:6]}"
    endpoint = _endpoint(rt, tenant)
    _, (started, completed) = _delivered_job(rt, tenant, endpoint, "job.started", "job.completed")
    sender = FakeSender(500, 200, 200)
    assert _run(rt, started.id, sender).retry_in is not None
    waiting = _run(rt, completed.id, sender)  # job.started still pending: job.completed waits
    assert waiting.retry_in is not None and len(sender.calls) == 1
    _run(rt, started.id, sender)
    _run(rt, completed.id, sender)
    assert [json.loads(c["body"])["type"] for c in sender.calls] == ["job.started", "job.started", "job.completed"]


def test_drain_is_idempotent_and_empties_the_outbox(rt, redis_client):
    tenant = f"drain-{uuid.uuid4().hex[:6]}"
    endpoint = _endpoint(rt, tenant, events=["job.started"])
    job = rt.store.create(_job(tenant))
    rt.store.start_stage(job.id, "encode", queue="cpu", worker="w")
    enqueued = []
    drain(rt, enqueue=lambda *a: enqueued.append(a))
    assert redis_client.llen(OUTBOX) == 0 and redis_client.llen(PROCESSING) == 0
    (delivery,) = rt.webhooks.deliveries_for_subject(job.id)
    assert delivery.endpoint_id == endpoint.id and (delivery.id, 0) in enqueued
    handle_event(rt, _outbox_event_for(rt, job), enqueue=lambda *a: enqueued.append(a))
    assert len(rt.webhooks.deliveries_for_subject(job.id)) == 1


def _outbox_event_for(rt, job):
    (delivery,) = rt.webhooks.deliveries_for_subject(job.id)
    fresh = rt.store.fetch(job.id)
    return JobEvent(id=delivery.event_id, type="job.started", tenant=job.tenant, subject=job.id, at=time.time(),
                    job_id=job.id, snapshot=fresh.to_dict())
