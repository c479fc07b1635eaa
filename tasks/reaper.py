"""The reaper: finds jobs that stopped moving and deals with them.

- A job past its deadline (``expires_at``) is failed as ``expired``.
- A job whose stage is in flight but held by no live worker (its lease, renewed by the
  worker's heartbeat, lapsed after ``stage_lease_s``, or its holder is a process of this machine
  that no longer exists) is enqueued again from that stage: a killed worker's jobs come back in
  seconds, with the default settings (tasks.leases). Stages are idempotent: a re-run finds the
  done markers; a stage started ``max_stage_attempts`` times fails as poison.
- A job whose running stage has shown no heartbeat (its start or a progress step) for
  ``stage_deadline_s`` is stuck — the last resort, for a worker alive but hung: its chain is
  enqueued again from that stage, or, once the stage has used up ``max_stage_attempts``, the job
  is failed.
- A job that waited for its next stage across a restart of the Redis broker is enqueued again
  from that stage at once. kombu's Redis transport takes a message off the queue (BRPOP) and
  then records it as unacknowledged in a second call: a restart between the two loses the
  message. Which job's message it was cannot be told, so every job that was waiting (its stage
  not started, no change since before the restart) gets one more; a duplicate finds the done
  markers or the terminal state and does nothing. RabbitMQ keeps unacknowledged messages itself.

- A blob (tasks.blobs) that no job has needed since a while is deleted: each job keeps its input
  and outputs for as long as its record lives (``job_ttl_s``), and a blob that two jobs share goes
  only after both. Latents need nothing here: every cache key carries its own TTL (``latent_ttl_s``).

Run it as a process (``pixelmill reaper``); several reapers are safe: each change is a
transaction and terminal states never change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from tasks import leases
from tasks.errors import InvalidTransition, JobNotFound
from tasks.jobs import Job, JobStatus
from tasks.pipeline import enqueue_from
from tasks.present import current_stage
from tasks.priority import promote_aged
from tasks.services import Services
from tasks.store import store_key

log = logging.getLogger(__name__)
BLOB_GRACE_S = 300  # a blob stays this long past its last job's expiry (clocks of other machines, in-flight writes)


@dataclass
class ReapReport:
    expired: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blobs_deleted: int = 0
    blob_bytes_deleted: int = 0
    promoted: dict[str, int] = field(default_factory=dict)  # queue → messages moved up a level


def reap(rt: Services, *, now: float | None = None) -> ReapReport:
    now = now or time.time()
    report = ReapReport()
    broker_since = broker_started_at(rt, now=now)
    for job in _unfinished_jobs(rt):
        try:
            _reap_job(rt, job, now=now, broker_since=broker_since, report=report)
        except (InvalidTransition, JobNotFound):
            continue  # it moved on (or ended) while we looked: not stuck
    if rt.broker_redis is not None:  # the starvation guard (RabbitMQ: no promotion)
        report.promoted = promote_aged(rt.broker_redis, older_than_s=rt.settings.priority_promote_after_s, now=now)
    deleted = rt.blobs.delete_expired(now=now - BLOB_GRACE_S)
    report.blobs_deleted, report.blob_bytes_deleted = deleted.count, deleted.bytes
    return report


def broker_started_at(rt: Services, *, now: float) -> float | None:
    """When the Redis broker last started, by this clock (None for another broker). Its uptime
    counts whole seconds, so this is never before the real start."""
    if rt.broker_redis is None:
        return None
    return now - int(rt.broker_redis.info("server")["uptime_in_seconds"])


def _reap_job(rt: Services, job: Job, *, now: float, broker_since: float | None, report: ReapReport) -> None:
    if job.is_expired(now):
        rt.store.fail(job.id, code="expired", message="the job passed its deadline before it could finish")
        report.expired.append(job.id)
        return
    stage = current_stage(job)
    if stage is None:
        return
    record = job.stages[stage]
    if not record.is_in_flight() and broker_since is not None and job.updated_at < broker_since:
        log.warning("job %s waited for its %s stage across a broker restart; enqueuing it again", job.id, stage)
        _requeue(rt, job, stage, report)
        return
    if job.status is JobStatus.QUEUED:
        return  # waiting in a queue is not being stuck
    if record.is_in_flight():
        holder = leases.fetch_holder(rt.redis, job.id, stage)
        if holder is None or holder.is_gone():
            who = "its lease lapsed" if holder is None else f"its worker (pid {holder.pid}) is gone"
            log.warning("job %s: %s is held by no live worker (%s); enqueuing it again", job.id, stage, who)
            _requeue(rt, job, stage, report)
            return
    heartbeat = max(record.started_at or 0, rt.store.fetch_progress(job.id).get("at", 0), job.updated_at)
    if now - heartbeat < rt.settings.stage_deadline_s:
        return
    if record.attempts >= rt.settings.max_stage_attempts:
        rt.store.fail(job.id, code="stuck", message=(
            f"the {stage} stage stopped moving {record.attempts} times; giving up on this job"))
        report.failed.append(job.id)
        return
    log.warning("job %s stuck in %s for %.0f s; enqueuing again from there", job.id, stage, now - heartbeat)
    _requeue(rt, job, stage, report)


def _requeue(rt: Services, job: Job, stage: str, report: ReapReport) -> None:
    rt.store.touch(job.id, requeued=stage)  # first: a later pass sees a change, and waits for this message
    enqueue_from(job, stage, rt.settings)
    report.requeued.append(job.id)


def _unfinished_jobs(rt: Services):
    for active_key in rt.redis.scan_iter(match=store_key("active", "*"), count=100):
        for job_id in rt.redis.smembers(active_key):
            try:
                yield rt.store.fetch(job_id.decode())
            except JobNotFound:
                rt.redis.srem(active_key, job_id)  # expired record: nothing left to reap


def run_forever(rt: Services) -> None:
    interval = rt.settings.reaper_interval_s
    log.info("reaper: checking unfinished jobs every %s s", interval)
    while True:
        try:
            report = reap(rt)
            if report.expired or report.requeued or report.failed or report.blobs_deleted:
                log.info("reaper: expired %d, requeued %d, failed %d; deleted %d blobs (%d bytes)",
                         len(report.expired), len(report.requeued), len(report.failed),
                         report.blobs_deleted, report.blob_bytes_deleted)
        except Exception:  # noqa: BLE001 — keep reaping through Redis restarts
            log.exception("reaper: pass failed; trying again in %s s", interval)
        _kick_webhooks(rt)
        time.sleep(interval)


def _kick_webhooks(rt: Services) -> None:
    """A periodic nudge for webhook delivery: drain any event the io queue was never told about
    and re-send pending deliveries whose task message was lost (tasks.webhooks.tasks.sweep)."""
    from tasks.webhooks.tasks import kick

    kick(rt.settings)
