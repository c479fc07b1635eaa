"""The Celery app and its configuration (long tasks, at-least-once delivery)."""

from __future__ import annotations

import importlib

from celery import Celery
from celery.signals import celeryd_after_setup, celeryd_init, worker_init, worker_process_init, worker_process_shutdown, worker_shutdown
from kombu import Queue

from tasks.priority import all_queues, consume_order
from tasks.quality import level_queues
from tasks.settings import QUEUES, Settings, get_settings


def celery_config(settings: Settings) -> dict:
    """Baseline settings for long tasks with at-least-once delivery.

    The broker's visibility timeout is longer than the hard time limit, which is longer than
    the soft one, so a task that is still running is never handed to a second worker.
    Producers (the web app) use the same transport options as workers.
    """
    return {
        "broker_url": settings.broker(),
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            # Redis broker: sweep for messages of dead workers every restore interval (kombu's
            # default scans only every ~100 s); never wait forever on a dead connection.
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            # the levels of a queue are lists BRPOPed in a fixed order: high before normal before low
            "queue_order_strategy": "priority",
            # one list per queue: priority is the queue (tasks.priority), never a message's own, so
            # kombu's four sub-lists per queue were four times the keys in every BRPOP (24 for a
            # cpu,gpu worker) and in every depth count, always empty
            "priority_steps": [0],
        },
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": settings.cancel_tasks_on_connection_loss,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": "cpu",
        # cpu.high, cpu, cpu.low, … (tasks.priority), and the queues of the quality levels (tasks.quality)
        "task_queues": [Queue(name) for name in
                        dict.fromkeys(all_queues([*QUEUES, *level_queues(settings.quality_levels)]))],
        "task_create_missing_queues": False,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": settings.task_events,  # Flower enables them remotely while it runs
        "task_send_sent_event": settings.task_events,
    }


STAGE_MODULES = "tasks.stages"  # the stage tasks, and through them the engines (torch)
IO_MODULES = ("tasks.webhooks.tasks", "tasks.schedules")  # webhook delivery, scheduled batches: no engine
INPUT_MODULES = "tasks.inputs"  # fetching input images given by URL (io queue): no engine


def stage_task_name(stage: str) -> str:
    return f"pixelmill.{stage}"


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery = Celery("pixelmill", include=[*IO_MODULES, INPUT_MODULES])
    celery.conf.update(celery_config(settings))
    return celery


app = create_celery()


def modules_for(queues: list[str] | None) -> list[str]:
    """The task modules a worker consuming ``queues`` imports: a worker of the io queue alone
    delivers webhooks and never loads the stages (nor torch); any other worker runs stages."""
    if queues and set(queues) <= {"io"}:
        return [*IO_MODULES]
    return [STAGE_MODULES, *IO_MODULES]


@celeryd_init.connect
def _import_stages(sender=None, conf=None, options=None, **_: object) -> None:
    """When a worker starts (before its pool): import the stage tasks if its queues need them.
    The app includes only the io tasks, so an io-only worker never loads an engine."""
    queues = (options or {}).get("queues")
    if isinstance(queues, str):
        queues = [q.strip() for q in queues.split(",") if q.strip()]
    for module in modules_for(list(queues) if queues else None):
        importlib.import_module(module)


@celeryd_after_setup.connect
def _consume_by_priority(sender=None, instance=None, **_: object) -> None:
    """A worker of `cpu` consumes cpu.high, cpu and cpu.low, in that order (tasks.priority)."""
    queues = instance.app.amqp.queues
    ordered = consume_order(list(queues.consume_from))
    for name in ordered:
        if name not in queues:
            queues.select_add(name)
    queues.select(ordered)


@worker_init.connect
def _worker_init(sender, **_: object) -> None:
    """The worker's main process: note what it serves; a threads/solo pool loads its models here
    (it runs the tasks itself), a prefork pool loads them in each child (below)."""
    from tasks import lifecycle

    lifecycle.on_worker_init(hostname=sender.hostname, queues=list(sender.app.amqp.queues.consume_from),
                             pool_cls=sender.pool_cls, concurrency=sender.concurrency)


@worker_process_init.connect
def _load_models(**_: object) -> None:
    """Load and warm models in the child after fork: CUDA must never be touched in the parent."""
    from tasks import lifecycle

    lifecycle.start_process()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    from tasks import lifecycle

    lifecycle.stop_process()
