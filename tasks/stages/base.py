"""What every stage does around its work: skip when already done, record start and finish,
turn errors into a failed job with a message a user can act on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import time

import numpy as np
import orjson
import redis
import torch
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from safety.errors import SafetyError
from safety.validate import decode_png, encode_png
from tasks.backoff import backoff_s
from tasks.errors import InvalidTransition, JobNotFound, PixelmillError
from tasks import leases
from tasks.jobs import Job, JobStatus
from tasks.store import StartNotApplied
from tasks.pipeline import RECORD_HEADER, ROUTE_HEADER, handoff, hands_off_inline, next_stage, send_stage
from tasks.priority import base_of
from tasks.recent_images import RecentImages
from tasks.settings import STAGES, Settings
from tasks.metrics import stage_metrics
from tasks.worker_runtime import WorkerRuntime, get_worker_runtime
from workers.errors import EngineError, Interrupted

log = logging.getLogger(__name__)

# Transient faults are retried with backoff, a bounded number of times; everything else
# fails the job at once. Redis may be away for minutes (a restart, a failover): ~5 min of
# retries. A GPU out of memory clears quickly or not at all: 3 retries.
TRANSIENT: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, torch.OutOfMemoryError)
MAX_RETRIES: dict[type[BaseException], int] = {redis.ConnectionError: 10, redis.TimeoutError: 10,
                                                torch.OutOfMemoryError: 3}


@dataclass
class StageResult:
    outputs: dict[str, str] = field(default_factory=dict)
    cached: bool = False
    cache: dict[str, Any] | None = None  # what the latent cache did, shown on the job
    end: JobStatus | None = None
    audit: dict[str, Any] | None = None
    device_s: float | None = None  # this job's share of device time when it shared it (a batch); else measured
    dtype: str | None = None  # the precision a diffusion stage ran at (its queue's: tasks.quality.queue_dtype)
    faces: dict[str, Any] | None = None  # enhance: what face restoration found and did (Job.faces)
    error: dict[str, str] | None = None  # with end=FAILED: why (a quality policy that fails the job)
    attempts: list[dict[str, Any]] | None = None  # the job's generations, all told (a quality policy's)
    params: dict[str, Any] | None = None  # with end: parameters of the attempt kept (its seed)
    restart: Restart | None = None  # instead of finishing: run the job again from a stage


@dataclass(frozen=True)
class Restart:
    """What a stage asks instead of finishing: run the job again from ``stage`` (audit → generate,
    a quality regeneration) with ``params`` merged in (the new seed), recording ``attempt``."""

    stage: str
    attempt: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)


StageWork = Callable[[Job, WorkerRuntime], StageResult]


def run_stage(task: Task, job_id: str, stage: str, work: StageWork) -> None:
    """Run one stage of a job. A transient fault anywhere in it (Redis away, GPU out of memory)
    is retried with backoff; if even the retry cannot be sent, the message stays unacknowledged
    in the broker and is delivered again, and the done markers make the re-run safe."""
    try:
        _run_stage(task, job_id, stage, work)
    except TRANSIENT as e:
        _release_lease(job_id, stage)  # the retry may run in another process: let it take the stage
        limit = next(n for kind, n in MAX_RETRIES.items() if isinstance(e, kind))
        if task.request.retries >= limit:
            _fail(get_worker_runtime(), job_id, code="unavailable",
                  message=f"{stage} failed {limit + 1} times on a transient error: {type(e).__name__}: {e}")
            raise Ignore() from e
        log.warning("%s: transient %s on job %s; retry %d of %d", stage, type(e).__name__, job_id,
                    task.request.retries + 1, limit)
        raise task.retry(exc=e, countdown=backoff_s(task.request.retries, base_s=1.0, cap_s=60.0), max_retries=limit) from e


def _release_lease(job_id: str, stage: str) -> None:
    try:
        get_worker_runtime().redis.delete(leases.lease_key(job_id, stage))
    except redis.RedisError:
        pass  # Redis is away: the lease lapses before long, and the reaper takes the stage then


class Skip(Exception):
    """Raised by ``_admit``: the stage does not run. The job moves on when ``proceed`` (the stage
    was done before); else it stops, failing the job with ``code`` and the message when given."""

    def __init__(self, message: str, *, proceed: bool = False, code: str | None = None) -> None:
        super().__init__(message)
        self.proceed, self.code = proceed, code


def _admit(rt: WorkerRuntime, stage: str, job: Job) -> None:
    """What a stage checks on the job before it starts (inside the start transition). A
    re-delivery (the reaper's, or Redis' after its visibility timeout) runs only what no live
    worker holds, and carries the chain on only where no other delivery has taken it."""
    if job.status.is_terminal():
        raise Skip(f"job {job.id} is already {job.status.value}; stopping its chain")
    record = job.stages[stage]
    index = STAGES.index(stage)
    if not record.done and index and not job.stages[STAGES[index - 1]].done:
        raise Skip(f"job {job.id}: {STAGES[index - 1]} has not run yet (a stale delivery from before the job was "
                   "sent back to it); dropping it")
    if record.done:
        following = STAGES[STAGES.index(stage) + 1:]
        if following and (job.stages[following[0]].done or job.stages[following[0]].is_in_flight()):
            raise Skip(f"job {job.id} already did this stage and moved on (a late re-delivery); dropping it")
        raise Skip(f"job {job.id} already did this stage (re-delivery); moving on", proceed=True)
    if record.is_in_flight():
        holder = leases.fetch_holder(rt.redis, job.id, stage)
        if holder is not None and holder != leases.current_holder() and not holder.is_gone():
            raise Skip(f"job {job.id}: {stage} is running on {holder.hostname} (pid {holder.pid}); "
                       "dropping this duplicate delivery")
    if job.is_expired():
        raise Skip("the job passed its deadline before it could finish", code="expired")
    if job.stages[stage].attempts >= rt.settings.max_stage_attempts:
        raise Skip(f"the {stage} stage was started {job.stages[stage].attempts} times without finishing "
                   "(its worker was lost each time); giving up on this job — the input may crash the engine",
                   code="poison")


def delivered_from(task: Task) -> str | None:
    """The queue the running task's message came from: `gpu.low`, `cpu` …"""
    return (task.request.delivery_info or {}).get("routing_key")


def _run_stage(task: Task, job_id: str, stage: str, work: StageWork, *, ahead: bool = True) -> None:
    rt = get_worker_runtime()
    routing_key = delivered_from(task)
    queue = base_of(routing_key) if routing_key else None  # cpu for cpu.high: prices and metrics are per queue
    lease = (str(leases.current_holder()), rt.settings.stage_lease_s)
    record = _record_of(task)
    try:
        job = rt.store.start_stage(job_id, stage, queue=queue, worker=task.request.hostname,
                                   admit=lambda job: _admit(rt, stage, job), lease=lease, record=record,
                                   ahead=ahead and _first_delivery(task))
    except JobNotFound:
        log.warning("%s: job %s no longer exists; dropping", stage, job_id)
        raise Ignore() from None
    except InvalidTransition:  # canceled or failed a moment ago
        raise Ignore() from None
    except Skip as skip:
        if skip.proceed:
            log.info("%s: %s", stage, skip)
            _hand_on(rt, job_id, stage, _route_of(task))
            return
        if skip.code is None:
            log.info("%s: %s", stage, skip)
        else:
            _fail(rt, job_id, code=skip.code, message=str(skip))
        raise Ignore() from None
    try:
        with leases.holding(job_id, stage):  # renewed by the heartbeat until the stage ends
            _work_and_finish(rt, job, stage, queue, work, hop=Hop(task_id=task.request.id, route=_route_of(task)))
    except StartNotApplied:  # sent ahead, and the job had changed: what was done is dropped
        log.info("%s: job %s changed before its start was written; deciding again on its record", stage, job_id)
        _run_stage(task, job_id, stage, work, ahead=False)
    finally:
        _settle_start(rt, job_id)


def _first_delivery(task: Task) -> bool:
    """Whether the stage's message is the one its hand-off queued, delivered for the first time:
    its record is then the job's unless something changed it since (a cancel), and the start is
    sent ahead (``JobStore.start_stage``) — the stage works while Redis writes it. A retry or a
    re-delivery (its worker lost) starts in a round trip of its own: its record may be stale, and
    admission (the attempts that detect a poison input, a live holder) must see the current one
    before the work begins."""
    return not task.request.retries and not (task.request.delivery_info or {}).get("redelivered")


def _settle_start(rt: WorkerRuntime, job_id: str) -> None:
    """A start sent ahead that no transition followed (the stage stopped without one): read its
    answer so that its connection goes back to the pool. Whether it took matters no more."""
    try:
        rt.store.settle_start(job_id)
    except (StartNotApplied, redis.RedisError):
        pass


@dataclass(frozen=True)
class Hop:
    """What a stage's message passes on to the next stage's: its task id (the next one's parent)
    and the job's route (tasks.pipeline.plan_route; None from a message that had none)."""

    task_id: str | None = None
    route: dict[str, str] | None = None


def _record_of(task: Task) -> bytes | None:
    """The job's record as the message carries it (tasks.pipeline.RECORD_HEADER): the bytes the
    store wrote, as a JSON string (an object in a message queued by an earlier version: orjson
    gives the same bytes); None from a message without one."""
    record = getattr(task.request, RECORD_HEADER, None)
    if isinstance(record, str):
        return record.encode()
    return orjson.dumps(record) if isinstance(record, dict) else None


def _route_of(task: Task) -> dict[str, str] | None:
    route = getattr(task.request, ROUTE_HEADER, None)
    return route if isinstance(route, dict) and set(STAGES) <= route.keys() else None


def _hand_on(rt: WorkerRuntime, job_id: str, stage: str, route: dict[str, str] | None) -> None:
    """A re-delivery of a stage that is done: its finish queued the next stage's message with the
    done marker when the broker is the job store's Redis; with another broker, that publish came
    after and may be what was lost, so it is sent again (a duplicate is dropped at admission)."""
    following = next_stage(stage)
    if following is not None and not hands_off_inline(rt.settings):
        _send(rt.store.fetch(job_id), following, rt.settings, Hop(route=route))


def _work_and_finish(rt: WorkerRuntime, job: Job, stage: str, queue: str | None, work: StageWork, *,
                     hop: Hop = Hop()) -> None:
    job_id = job.id
    started = time.monotonic()
    try:
        result = work(job, rt)
    except TRANSIENT:
        raise
    except Interrupted:
        if not rt.store.is_canceled(job_id):
            _fail(rt, job_id, code="interrupted", message=f"{stage} was interrupted")
    except SoftTimeLimitExceeded:
        _fail(rt, job_id, code="timeout",
              message=f"{stage} took longer than {rt.settings.task_soft_time_limit} s; "
                      "try fewer steps or a smaller size")
    except (EngineError, SafetyError, PixelmillError) as e:
        _fail(rt, job_id, code=getattr(e, "code", "stage_failed"), message=f"{stage} failed: {e}")
    except Exception as e:  # noqa: BLE001 — any other fault still ends the job with a message
        log.exception("%s: unexpected error on job %s", stage, job_id)
        _fail(rt, job_id, code="internal_error", message=f"{stage} failed unexpectedly: {type(e).__name__}: {e}")
    else:
        wall_s = time.monotonic() - started
        device_s = result.device_s if result.device_s is not None else wall_s  # what it used, cached or not
        metrics = partial(stage_metrics, stage=stage, queue=queue, seconds=wall_s, device_s=device_s,
                          prices=rt.settings.price_per_hour)
        if result.restart is not None:
            _restart(rt, job, stage, result.restart, device_s=round(device_s, 4), also=metrics, hop=hop)
            return
        following = None if result.end is not None else next_stage(stage)
        message = handoff(job, following, rt.settings, route=hop.route, parent_id=hop.task_id)
        try:
            rt.store.finish_stage(job_id, stage, outputs=result.outputs, cached=result.cached,
                                  cache=result.cache, end=result.end, audit=result.audit,
                                  device_s=round(device_s, 4), dtype=result.dtype, error=result.error,
                                  attempts=result.attempts, params=result.params,
                                  faces=result.faces, handoff=message, also=metrics)
        except InvalidTransition:  # canceled while this stage ran: drop its output
            raise Ignore() from None
        if following is not None and message is None:
            _send(job, following, rt.settings, hop)
        return
    raise Ignore()  # the job has failed: stop the chain here


def _restart(rt: WorkerRuntime, job: Job, stage: str, restart: Restart, *, device_s: float,
             also: Callable, hop: Hop) -> None:
    """Send the job back to ``restart.stage``: one transition, which queues that stage's message
    too when the broker is the job store's Redis (else it is sent after)."""
    message = handoff(job, restart.stage, rt.settings, route=hop.route, parent_id=hop.task_id)
    try:
        rt.store.restart_at(job.id, restart.stage, ending=stage, attempt=restart.attempt, params=restart.params,
                            device_s=device_s, handoff=message, also=also)
    except InvalidTransition:  # canceled while this stage ran
        raise Ignore() from None
    if message is None:
        _send(job, restart.stage, rt.settings, hop)


def _send(job: Job, stage: str, settings: Settings, hop: Hop) -> None:
    """Publish the next stage through Celery after the transition (a broker other than the job
    store's Redis). If that is lost, the reaper sends the stage again once it has shown no
    heartbeat for stage_deadline_s (the job waits with that stage not started)."""
    try:
        send_stage(job, stage, settings, route=hop.route)
    except Exception as e:  # noqa: BLE001 — the record is written: the reaper finishes what this could not
        log.warning("job %s: could not send it on to %s (%s: %s); the reaper will", job.id, stage,
                    type(e).__name__, e)


def _fail(rt: WorkerRuntime, job_id: str, *, code: str, message: str) -> None:
    try:
        rt.store.fail(job_id, code=code, message=message)
    except PixelmillError as e:
        log.warning("could not mark job %s failed: %s", job_id, e)


_recent = RecentImages()  # this process's last images, decoded (tasks.recent_images)


def load_image(rt: WorkerRuntime, ref: str) -> np.ndarray:
    """A stored image, decoded (read-only): from this process's recent images when it saved or
    loaded it lately, else from the blob store."""
    image = _recent.get(ref)
    if image is None:
        image = _recent.put(ref, decode_png(rt.blobs.fetch(ref)))
    return image


def save_image(rt: WorkerRuntime, image: np.ndarray, *, intermediate: bool = False) -> str:
    """Store a stage's output; ``intermediate``: only later stages read it, nobody downloads it, so
    it is written uncompressed (safety.png: ~0.1 ms where compressing a 384² image takes ~1.5)."""
    ref = rt.blobs.save(encode_png(image, compress=not intermediate), ext="png")
    _recent.put(ref, image)  # the next stage of the job, in this process, reads it without decoding
    return ref
