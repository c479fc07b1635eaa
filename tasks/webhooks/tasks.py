"""The thin Celery tasks of webhook delivery, all on the io queue (never on a GPU worker):
``pixelmill.webhooks.dispatch`` drains the event outbox into deliveries, ``pixelmill.deliver``
makes one attempt and schedules what follows."""

from __future__ import annotations

import logging
import time
from functools import partial

import redis
from celery.signals import worker_ready

from tasks.celery_app import app
from tasks.pipeline import route_for
from tasks.services import Services, get_services
from tasks.settings import Settings, get_settings
from tasks.webhooks.deliver import Policy, run_delivery
from tasks.webhooks.dispatch import drain

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 10
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


def io_queue(settings: Settings) -> str:
    return route_for("notify", "*", overrides=settings.routes)


@app.task(name="pixelmill.webhooks.dispatch", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def dispatch() -> None:
    rt = get_services()
    drain(rt, enqueue=partial(enqueue_delivery, rt.settings))
    sweep(rt)


@app.task(name="pixelmill.deliver", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def deliver(delivery_id: str, schedule: int = 0) -> None:
    rt = get_services()
    step = run_delivery(rt.webhooks, Policy.from_settings(rt.settings), delivery_id=delivery_id, schedule=schedule)
    if step.retry_in is not None:
        enqueue_delivery(rt.settings, delivery_id, step.schedule, countdown=step.retry_in)
    for wake_id, wake_schedule in step.wake:
        enqueue_delivery(rt.settings, wake_id, wake_schedule)


def enqueue_delivery(settings: Settings, delivery_id: str, schedule: int, *, countdown: float = 0.0) -> None:
    deliver.apply_async((delivery_id, schedule), queue=io_queue(settings), countdown=countdown or None)


def kick(settings: Settings) -> None:
    """Ask an io worker to drain the outbox. Never raises and never waits on a broker that is
    down: the events are already stored, and the next kick (or an io worker starting) sends them."""
    try:
        dispatch.apply_async(queue=io_queue(settings), retry=False)
    except Exception as e:  # noqa: BLE001 — emission must never fail or delay a stage
        log.warning("could not enqueue webhook dispatch (events stay in the outbox): %s", e)


def sweep(rt: Services) -> int:
    """Re-enqueue pending deliveries whose task message was lost, or whose io worker died in the
    middle of an attempt (at most every 10 s): those past their time by more than an attempt's
    lock lives, so that the lock of a dead worker has lapsed when the new message runs."""
    if not rt.webhooks.once_every("sweep", seconds=SWEEP_EVERY_S):
        return 0
    revived = 0
    grace_s = Policy.from_settings(rt.settings).held_s
    for delivery_id in rt.webhooks.due(before=time.time() - grace_s):
        delivery = rt.webhooks.fetch_delivery(delivery_id)
        if delivery is not None and delivery.status == "pending":
            enqueue_delivery(rt.settings, delivery.id, delivery.schedule)
            revived += 1
    if revived:
        log.warning("webhook sweep: re-enqueued %d overdue deliveries", revived)
    return revived


@worker_ready.connect
def _drain_on_start(**_: object) -> None:
    """Whatever was emitted while no io worker ran goes out now."""
    kick(get_settings())
