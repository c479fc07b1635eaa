"""One delivery attempt and what follows it.

- 2xx: delivered. 410: the endpoint is disabled and the delivery dead-lettered.
- Timeouts, network errors, 429 and 5xx: retried with exponential backoff and jitter
  (``Retry-After`` honoured), until ``webhook_max_attempts``; then dead-lettered.
- Any other status (3xx included: redirects are never followed): dead-lettered at once.

Order: a delivery waits while the previous delivery of the same job to the same endpoint
is still pending. A slow receiver holds at most ``webhook_endpoint_concurrency`` io threads,
each for at most ``webhook_timeout_s``. Every attempt is logged on the delivery.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from safety.outbound import (CheckedTarget, OutboundError, OutboundRefused, Response, UnresolvableHost, check_url,
                             post)
from tasks.backoff import backoff_s
from tasks.metrics import record_webhook
from tasks.settings import Settings
from tasks.webhooks import signing
from tasks.webhooks.endpoints import disable_endpoint
from tasks.webhooks.models import Attempt, Delivery, Endpoint
from tasks.webhooks.store import WebhookStore

log = logging.getLogger(__name__)

Sender = Callable[..., Response]
ERROR_SNIPPET = 300


@dataclass(frozen=True)
class Policy:
    timeout_s: float
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    max_response_bytes: int
    allow_private: bool
    endpoint_concurrency: int

    @property
    def held_s(self) -> float:
        """How long an attempt's lock and receiver slot outlive a worker that died holding them."""
        return self.timeout_s + 30

    @classmethod
    def from_settings(cls, s: Settings) -> "Policy":
        return cls(timeout_s=s.webhook_timeout_s, max_attempts=s.webhook_max_attempts,
                   backoff_base_s=s.webhook_backoff_base_s, backoff_max_s=s.webhook_backoff_max_s,
                   max_response_bytes=s.webhook_max_response_bytes, allow_private=s.webhook_allow_private,
                   endpoint_concurrency=s.webhook_endpoint_concurrency)


@dataclass(frozen=True)
class Decision:
    outcome: str  # delivered | retry | dead
    reason: str | None = None
    retry_in: float | None = None
    disable: bool = False


@dataclass(frozen=True)
class Step:
    """What the task does next: run again after ``retry_in`` s (same ``schedule``), and wake these."""

    retry_in: float | None = None
    schedule: int = 0
    wake: list[tuple[str, int]] = field(default_factory=list)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def judge(*, status: int | None, tries: int, policy: Policy, retry_after: float | None = None,
          error: str | None = None, retryable_error: bool = True,
          rand: Callable[[], float] = random.random) -> Decision:
    """The outcome of the ``tries``-th attempt (1-based) that ended with ``status`` or ``error``."""
    if status is not None and 200 <= status < 300:
        return Decision("delivered")
    if status == 410:
        return Decision("dead", reason="the receiver answered 410 Gone; the endpoint is now disabled", disable=True)
    if status is not None and 300 <= status < 400:
        return Decision("dead", reason=f"the receiver answered {status} (a redirect); redirects are not followed — "
                                      "register the final URL")
    if status is not None and status != 429 and status < 500:
        return Decision("dead", reason=f"the receiver answered {status}; not retried "
                                      "(only timeouts, network errors, 429 and 5xx are)")
    if status is None and not retryable_error:
        return Decision("dead", reason=error)
    what = error if status is None else f"HTTP {status}"
    if tries >= policy.max_attempts:
        return Decision("dead", reason=f"gave up after {tries} attempts; last: {what}")
    if retry_after is not None:
        delay = min(max(retry_after, 0.0), policy.backoff_max_s)
    else:
        delay = backoff_s(tries - 1, base_s=policy.backoff_base_s, cap_s=policy.backoff_max_s, rand=rand)
    return Decision("retry", reason=what, retry_in=delay)


def run_delivery(store: WebhookStore, policy: Policy, *, delivery_id: str, schedule: int,
                 send: Sender = post) -> Step:
    """Attempt a delivery if it is its turn; say when to come back otherwise."""
    delivery = store.fetch_delivery(delivery_id)
    if delivery is None or delivery.status != "pending" or delivery.schedule != schedule:
        return Step()  # done, or a stale message: a newer one carries the current schedule
    now = time.time()
    if delivery.next_attempt_at - now > 0.05:
        return Step(retry_in=delivery.next_attempt_at - now, schedule=schedule)
    before, _ = store.neighbours(delivery)
    if before is not None and before.status == "pending":  # keep the job's events in order
        wait = min(max(before.next_attempt_at - now, 0.25), 10.0)
        store.postpone(delivery.id, until=now + wait)
        return Step(retry_in=wait, schedule=schedule)
    endpoint = store.fetch_endpoint(delivery.endpoint_id)
    if endpoint is None or endpoint.disabled:
        why = ("the endpoint was deleted" if endpoint is None
               else f"the endpoint is disabled ({endpoint.disabled_reason})")
        return _finish(store, delivery, verdict=Decision("dead", reason=why), attempt=None)
    lock = store.lock_attempt(delivery.id, ttl_s=policy.held_s)
    if lock is None:
        return Step()  # another worker is attempting it right now
    try:
        slot = store.acquire_slot(endpoint.id, limit=policy.endpoint_concurrency, ttl_s=policy.held_s)
        if slot is None:  # this receiver already has its share of io threads
            wait = 0.5 + random.random()
            store.postpone(delivery.id, until=now + wait)
            return Step(retry_in=wait, schedule=schedule)
        try:
            current = store.fetch_delivery(delivery_id)
            if current is None or current.status != "pending" or current.schedule != schedule:
                return Step()
            attempt, verdict = attempt_once(current, endpoint=endpoint, policy=policy, send=send)
        finally:
            store.release_slot(endpoint.id, slot)
        return _finish(store, current, verdict=verdict, attempt=attempt)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("webhook %s: attempt lock expired before release", delivery_id)


def attempt_once(delivery: Delivery, *, endpoint: Endpoint, policy: Policy,
                 send: Sender = post) -> tuple[Attempt, Decision]:
    """Sign and send once (the guard runs again: DNS may have changed since the URL was given)."""
    started = time.monotonic()
    status: int | None = None
    retry_after = None
    error = None
    retryable_error = True
    try:
        target: CheckedTarget = check_url(endpoint.url, allow_private=policy.allow_private)
        timestamp = int(time.time())
        headers = signing.headers(endpoint.live_secrets(), msg_id=delivery.event_id, timestamp=timestamp,
                                  body=delivery.body)
        response = send(target, body=delivery.body.encode(), headers=headers, timeout_s=policy.timeout_s,
                        max_response_bytes=policy.max_response_bytes)
        status = response.status
        retry_after = parse_retry_after(response.header("retry-after"))
        if not 200 <= status < 300:
            snippet = response.body[:ERROR_SNIPPET].decode("utf-8", "replace").strip()
            error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
            if 300 <= status < 400 and response.header("location"):
                error += f" (Location: {response.header('location')})"
    except OutboundRefused as e:
        error = str(e)
        retryable_error = isinstance(e, UnresolvableHost)  # DNS trouble may pass; a forbidden address will not
    except OutboundError as e:
        error = str(e)
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    verdict = judge(status=status, tries=delivery.tries + 1, policy=policy, retry_after=retry_after,
                    error=error, retryable_error=retryable_error)
    return Attempt(at=time.time(), status_code=status, latency_ms=latency_ms, error=error,
                   retry_in_s=verdict.retry_in), verdict


def _finish(store: WebhookStore, delivery: Delivery, *, verdict: Decision, attempt: Attempt | None) -> Step:
    now = time.time()

    def change(d: Delivery) -> None:
        if attempt is not None:
            d.record(attempt)
        else:
            d.schedule += 1
            d.last_error = verdict.reason
        if verdict.outcome == "delivered":
            d.status, d.delivered_at, d.last_error = "delivered", now, None
        elif verdict.outcome == "dead":
            d.status, d.dead_at, d.last_error = "dead", now, verdict.reason or d.last_error
        else:
            d.next_attempt_at = now + (verdict.retry_in or 0)

    updated = store.update_delivery(delivery.id, change) or delivery
    record_webhook(store.redis, verdict.outcome, tenant=delivery.tenant)  # tasks.metrics: by outcome (and tenant)
    if verdict.disable:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        disable_endpoint(store, delivery.endpoint_id, reason=f"answered 410 Gone at {when}")
    if attempt is not None:
        log.info("webhook %s %s → %s: attempt %d, %s in %s ms; %s", delivery.event, delivery.id, delivery.url,
                 updated.attempts_total, attempt.status_code or attempt.error, attempt.latency_ms, verdict.outcome
                 + (f" (again in {verdict.retry_in:.1f} s)" if verdict.retry_in is not None else ""))
    else:
        log.warning("webhook %s %s → %s: dead-lettered without an attempt: %s", delivery.event, delivery.id,
                    delivery.url, verdict.reason)
    if verdict.outcome == "retry":
        return Step(retry_in=verdict.retry_in, schedule=updated.schedule)
    _, after = store.neighbours(updated)
    wake = [(after.id, after.schedule)] if after is not None and after.status == "pending" else []
    return Step(wake=wake)
