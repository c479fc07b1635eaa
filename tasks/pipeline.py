"""The stage order's hand-offs and the routing policy: the only places that know the stage order
and which queue runs what.

A job's four stages are four Celery tasks on their own queues; each message carries only the job
id. Each stage, when it finishes, hands the job to the next: the next stage's message is pushed
onto its queue in the same transition that writes this stage's done marker (``handoff``), when the
broker is the job store's Redis (the default). So a stage is never done with its successor
unsent, and a hop costs no publish of its own. With another broker (RabbitMQ), the message is
published through Celery right after the transition; if that publish is lost, the reaper sends
the stage again once it has waited stage_deadline_s.

A message queued that way also carries the job's record as that transition (or submit) wrote it,
in the header ``pixelmill_record``: the next stage starts its compare-and-set from it instead of
reading the record first (a round trip per stage). It is only where the change starts: if the job
changed since (canceled, sent back), the script answers the current record and the change is made
again on that. The header holds the record's text as a JSON string — its exact bytes, and for kombu
and Celery one string to decode, copy into the unacked hash and pickle to the pool's process, where
the record as an object cost them ~50 µs more a message (bench: 34 → 23 µs to decode, 41 → 21 µs to
copy, 24 → 8 µs to pickle and unpickle).
"""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass

import orjson

from tasks.celery_app import app, stage_task_name
from tasks.jobs import Job
from tasks.priority import JOB_CREATED_HEADER, queue_for
from tasks.quality import quality_queue
from tasks.settings import STAGES, Settings
from tasks.transition import AroundRecord, quote

# (stage, engine) → queue; "*" matches any engine.
DEFAULT_ROUTES: dict[str, str] = {
    "encode:diffusion": "gpu",
    "generate:diffusion": "gpu",
    "encode:style": "cpu",
    "generate:style": "cpu",
    "enhance:*": "cpu",
    "audit:*": "cpu",
    "notify:*": "io",
    "fetch:*": "io",  # an input image given by URL (tasks.inputs): the network, as webhooks
}


def route_for(stage: str, engine: str, *, overrides: dict[str, str] | None = None) -> str:
    """The queue that runs ``stage`` for ``engine``. Overrides (setting ``routes``) win."""
    routes = {**DEFAULT_ROUTES, **(overrides or {})}
    for key in (f"{stage}:{engine}", f"{stage}:*"):
        if key in routes:
            return routes[key]
    raise KeyError(f"no route for stage {stage!r} and engine {engine!r}")


def stage_queue(job: Job, stage: str, settings: Settings) -> str:
    """The queue of ``stage`` for this job: its quality level's, else the route's, at its priority."""
    engine, level = job.params["engine"], job.params.get("priority", "normal")
    return queue_for(quality_queue(job.params, stage, settings.quality_levels)
                     or route_for(stage, engine, overrides=settings.routes), level)


ROUTE_HEADER = "pixelmill_route"  # on every stage message: {stage: queue}, as decided when the job was sent
RECORD_HEADER = "pixelmill_record"  # on a message queued with a transition: the record it wrote


def plan_route(job: Job, settings: Settings) -> dict[str, str]:
    """The queue of every stage of the job. Decided once, where the job is sent (submit, the
    reaper), and carried from stage to stage in the messages: a worker's own settings never
    re-route a job that is under way."""
    return {stage: stage_queue(job, stage, settings) for stage in STAGES}


def next_stage(stage: str) -> str | None:
    index = STAGES.index(stage) + 1
    return STAGES[index] if index < len(STAGES) else None


@dataclass(frozen=True)
class StageMessage:
    """A stage task's message as Celery's Redis transport keeps it in a queue's list: kombu's
    envelope (headers, properties, the JSON body in base64). Pushed with LPUSH, it is consumed as
    any message Celery published (a priority-0 message's list is the queue's name)."""

    queue: str
    payload: bytes  # the envelope; its headers are its last member, so the record can close both

    def around_record(self) -> AroundRecord:
        """The message for a transition, which puts the record it writes in its headers."""
        return AroundRecord(self.payload[:-2].decode() + f',"{RECORD_HEADER}":', "}}", quoted=True)

    def with_record(self, record: bytes) -> bytes:
        """The message with ``record`` (the job's, as written with it) in its headers: what the
        transition script makes of ``around_record()``, made here (submit knows its record)."""
        around = self.around_record()
        return around.before.encode() + quote(record) + around.after.encode()


def stage_message(job: Job, stage: str, route: dict[str, str], *, parent_id: str | None = None) -> StageMessage:
    """The message that runs ``stage`` of ``job`` on ``route[stage]``: Celery's own task message
    (protocol 2), in the envelope its Redis transport writes. Celery builds it once per stage and
    process (``_template``); each message fills in its own ids, its job and its route (~18 µs where
    building it through ``app.amqp`` each time took ~42: four a job)."""
    task_id = str(uuid.uuid4())
    queue = route[stage]
    headers, properties, embed = _template(stage, _time_limits())
    envelope = {
        "body": base64.b64encode(orjson.dumps([[job.id], {}, embed])).decode(),
        "content-encoding": "utf-8", "content-type": "application/json",
        "properties": {**properties, "correlation_id": task_id,
                       "delivery_info": {"exchange": "", "routing_key": queue}, "delivery_tag": str(uuid.uuid4())},
        "headers": {**headers, "id": task_id, "root_id": task_id, "parent_id": parent_id,
                    "argsrepr": repr((job.id,)), **_headers(job, route)},  # last: StageMessage.with_record
    }
    return StageMessage(queue=queue, payload=orjson.dumps(envelope))


_templates: dict[tuple, tuple[dict, dict, dict]] = {}


def _template(stage: str, time_limits: dict[str, int | None]) -> tuple[dict, dict, dict]:
    """Headers, properties and the body's embedded part of ``stage``'s message as ``app.amqp``
    builds them, the per-message fields aside. Kept per process: the headers name it (origin)."""
    key = (stage, time_limits["time_limit"], time_limits["soft_time_limit"], os.getpid())
    if key not in _templates:
        headers, properties, body, _ = app.amqp.as_task_v2(
            "", stage_task_name(stage), args=(), kwargsrepr="{}", ignore_result=None, **time_limits)
        _templates[key] = (headers, {**properties, "delivery_mode": 2, "priority": 0, "body_encoding": "base64"},
                           body[2])
    return _templates[key]


def hands_off_inline(settings: Settings) -> bool:
    """Whether stage messages go out inside the job store's transitions: the broker is its Redis."""
    return settings.broker() == settings.redis_url


def handoff(job: Job, stage: str | None, settings: Settings, *, route: dict[str, str] | None = None,
            parent_id: str | None = None) -> StageMessage | None:
    """The message of ``stage`` for the transition that makes it the job's next to write with it
    (on ``route``, the job's, else planned here); None when there is no next stage, or when the
    broker is elsewhere (then ``send_stage`` after)."""
    if stage is None or not job.input_ref or not hands_off_inline(settings):
        return None
    return stage_message(job, stage, route or plan_route(job, settings), parent_id=parent_id)


def send_stage(job: Job, stage: str, settings: Settings, *, route: dict[str, str] | None = None) -> None:
    """Publish ``stage``'s message through Celery (outside a transition: the reaper, a fetched
    input, any broker)."""
    route = route or plan_route(job, settings)
    app.send_task(stage_task_name(stage), args=(job.id,), queue=route[stage], headers=_headers(job, route),
                  **_time_limits())


def _headers(job: Job, route: dict[str, str]) -> dict:
    # the job's age: the starvation guard promotes by it (tasks.priority); its route, for the next stages
    return {JOB_CREATED_HEADER: job.created_at, ROUTE_HEADER: route}


def _time_limits() -> dict[str, int | None]:
    return {"time_limit": app.conf.task_time_limit, "soft_time_limit": app.conf.task_soft_time_limit}


FETCH_TASK = "pixelmill.fetch_input"


def enqueue(job: Job, settings: Settings) -> None:
    """Start the job: its first stage; for a job whose input is still a URL, its fetch (which
    starts the job once the image is stored: tasks.inputs)."""
    enqueue_from(job, STAGES[0], settings)


def enqueue_from(job: Job, stage: str, settings: Settings) -> None:
    """Send the job to ``stage`` (the reaper's re-enqueue; the rest follows by hand-offs); a job
    still waiting for its input gets its fetch again instead."""
    if not job.input_ref:
        enqueue_fetch(job, settings)
        return
    send_stage(job, stage, settings)


def enqueue_fetch(job: Job, settings: Settings) -> None:
    app.signature(FETCH_TASK, args=(job.id,), immutable=True,
                  queue=route_for("fetch", job.params["engine"], overrides=settings.routes)).apply_async()
