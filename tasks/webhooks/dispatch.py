"""From the event outbox to deliveries.

One dispatcher at a time (a Redis lock) drains the outbox in order, so the deliveries of
one job are created in the order its events happened; the deliver task then keeps that
order per endpoint. An event moves outbox → processing before it is handled and leaves
processing only once its deliveries exist, so a crash mid-way re-handles it (creating a
delivery is idempotent: its id is derived from the event and the endpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from tasks.errors import JobNotFound
from tasks.events import OUTBOX, PROCESSING, JobEvent
from tasks.events import event_key
from tasks.jobs import Job
from tasks.present import batch_payload, job_payload
from tasks.services import Services
from tasks.webhooks.models import Delivery, Endpoint, WebhookPayload, normalise_url
from tasks.webhooks.store import WebhookStore, webhook_key

log = logging.getLogger(__name__)

Enqueue = Callable[[str, int], None]  # (delivery id, schedule)
LOCK_TTL_S = 15  # renewed while draining; a dispatcher that died frees it soon
FAILED = event_key("failed")


def drain(rt: Services, *, enqueue: Enqueue) -> int:
    """Handle every event in the outbox; returns how many. Safe to call from many workers at once."""
    handled = 0
    while True:
        lock = rt.redis.lock(webhook_key("dispatch-lock"), timeout=LOCK_TTL_S)
        if not lock.acquire(blocking=False):
            return handled  # another dispatcher is draining; it re-checks the outbox when done
        try:
            handled += _drain_locked(rt, lock, enqueue=enqueue)
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                log.warning("dispatch lock expired while draining; another dispatcher may have started")
        if not rt.redis.llen(OUTBOX):
            return handled


def _drain_locked(rt: Services, lock: redis.lock.Lock, *, enqueue: Enqueue) -> int:
    handled = 0
    while True:
        raw = rt.redis.lindex(PROCESSING, 0) or rt.redis.lmove(OUTBOX, PROCESSING, "LEFT", "RIGHT")
        if raw is None:
            return handled
        try:
            handle_event(rt, JobEvent.from_json(raw), enqueue=enqueue)
        except redis.RedisError:
            raise  # transient: the event stays in processing and is handled on the next drain
        except Exception:  # noqa: BLE001 — a poison event must not stop every later one
            log.exception("webhook dispatch: could not handle event %r; moved to %s", raw[:200], FAILED)
            rt.redis.rpush(FAILED, raw)
        rt.redis.lpop(PROCESSING)
        handled += 1
        lock.reacquire()


def handle_event(rt: Services, event: JobEvent, *, enqueue: Enqueue) -> list[Delivery]:
    """Create (and enqueue) one delivery per endpoint that wants this event."""
    endpoints = targets(rt.webhooks, event, max_standing=rt.settings.webhook_max_endpoints)
    if not endpoints:
        return []
    body = payload_body(rt, event)
    created = []
    for endpoint in endpoints:
        delivery = Delivery.create(event=event, endpoint=endpoint, body=body)
        if rt.webhooks.create_delivery(delivery):
            created.append(delivery)
            try:
                enqueue(delivery.id, delivery.schedule)
            except Exception as e:  # noqa: BLE001 — it is pending in the store; the sweep sends it
                log.error("webhook %s: could not enqueue delivery %s: %s", event.type, delivery.id, e)
    return created


def targets(store: WebhookStore, event: JobEvent, *, max_standing: int | None = None) -> list[Endpoint]:
    """Standing endpoints whose filter matches, plus the job's and its batch's own subscriptions;
    one delivery per endpoint, and one per URL, however it is spelled (a standing endpoint wins
    over a per-job one). At most ``max_standing`` standing endpoints, the oldest: a tenant that
    has more (made before the cap) does not fan one event out to all of them."""
    standing = sorted(store.standing_endpoints(event.tenant), key=lambda e: e.created_at)
    if max_standing is not None and len(standing) > max_standing:
        log.warning("tenant %s has %d standing webhook endpoints; only the oldest %d hear events "
                    "(PIXELMILL_WEBHOOK_MAX_ENDPOINTS)", event.tenant, len(standing), max_standing)
        standing = standing[:max_standing]
    found: dict[str, Endpoint] = {e.id: e for e in standing if e.wants(event.type)}
    subjects = [event.batch_id] if event.type == "batch.completed" else [event.job_id, event.batch_id]
    for subject in subjects:
        subscription = store.fetch_subscription(subject)
        if subscription is None or not subscription.wants(event.type) or subscription.endpoint_id in found:
            continue
        endpoint = store.fetch_endpoint(subscription.endpoint_id)
        if endpoint is not None and not endpoint.disabled and endpoint.tenant == event.tenant:
            found[endpoint.id] = endpoint
    by_url: dict[str, Endpoint] = {}
    for endpoint in sorted(found.values(), key=lambda e: (not e.standing, e.created_at)):
        by_url.setdefault(normalise_url(endpoint.url), endpoint)
    return list(by_url.values())


def payload_body(rt: Services, event: JobEvent) -> str:
    """The JSON body every delivery of this event sends, built once: a job as it was at the event."""
    base_url = rt.settings.public_url.rstrip("/")
    if event.type == "batch.completed":
        batch = rt.store.fetch_batch(event.subject)
        jobs = []
        for job_id in batch.job_ids:
            try:
                jobs.append(rt.store.fetch(job_id))
            except JobNotFound:
                continue
        data = batch_payload(batch, jobs, base_url=base_url)
    else:
        data = job_payload(Job.from_dict(event.snapshot or {}), base_url=base_url)
    return WebhookPayload.for_event(event, data).model_dump_json()
