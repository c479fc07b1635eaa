"""Job events and their durable outbox.

A state change that callers may want to hear about (a job started, ended; a batch finished)
becomes a ``JobEvent`` written to the outbox list *in the same Redis transaction* as the
state change itself (see ``tasks.store.JobStore._update``), so an event can never be lost
between "the job changed" and "someone was told". The webhook dispatcher on the io queue
drains the outbox (``tasks.webhooks.dispatch``).

Events are written only when someone may want them (a webhook endpoint or subscription that
could match exists at that moment: ``tasks.webhooks.store.listener_keys``); the transition
script decides, on the server.

``batch.completed`` is decided inside that same transaction: each job that reaches a
terminal state adds itself to its batch's done-set, and the one whose addition makes the
set complete pushes the batch event — exactly once, however jobs race.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, fields
from typing import Any

from tasks.jobs import STAGE_STATUS, Job, JobStatus
from tasks.transition import COMPLETES_BATCH, LISTENED, AroundRecord, Writes

PREFIX = "pixelmill"

JOB_EVENTS = ("job.started", "job.completed", "job.failed", "job.blocked", "job.canceled")
EVENT_TYPES = (*JOB_EVENTS, "batch.completed")

_TERMINAL_EVENT = {
    JobStatus.SUCCEEDED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.BLOCKED: "job.blocked",
    JobStatus.CANCELED: "job.canceled",
}

def event_key(kind: str, *parts: str) -> str:
    """Every Redis key of the event outbox: ``pixelmill:events:<kind>:<parts…>``."""
    return ":".join((PREFIX, "events", kind, *parts))


OUTBOX = event_key("outbox")
PROCESSING = event_key("processing")


@dataclass(frozen=True)
class JobEvent:
    id: str  # stable: becomes the webhook-id every delivery of this event carries
    type: str
    tenant: str
    subject: str  # the job id, or the batch id for batch.completed
    at: float
    job_id: str | None = None
    batch_id: str | None = None
    snapshot: dict[str, Any] | None = None  # the job as it was at this moment (job events)

    @classmethod
    def create(cls, *, type: str, tenant: str, subject: str, job_id: str | None = None,
               batch_id: str | None = None, snapshot: dict[str, Any] | None = None) -> "JobEvent":
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        return cls(id=f"msg_{uuid.uuid4().hex}", type=type, tenant=tenant, subject=subject, at=time.time(),
                   job_id=job_id, batch_id=batch_id, snapshot=snapshot)

    def around_snapshot(self) -> AroundRecord:
        """The event as the transition script writes it: its snapshot is the record it writes."""
        head = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "snapshot"}
        return AroundRecord.member(head, "snapshot")

    def to_json(self) -> str:
        # shallow (asdict deep-copies the snapshot: it was the costliest line of a transition)
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "JobEvent":
        return cls(**json.loads(raw))


def job_events(before: JobStatus, job: Job) -> list[JobEvent]:
    """The events a move from ``before`` to ``job.status`` emits (job.started once: on leaving queued)."""
    types = []
    if before is JobStatus.QUEUED and job.status in STAGE_STATUS.values():
        types.append("job.started")
    if not before.is_terminal() and job.status.is_terminal():
        types.append(_TERMINAL_EVENT[job.status])
    snapshot = job.to_dict() if types else None
    return [JobEvent.create(type=t, tenant=job.tenant, subject=job.id, job_id=job.id, batch_id=job.batch_id,
                            snapshot=snapshot) for t in types]


def stage_events(writes: Writes, job: Job, events: list[JobEvent], *, batch_size: int,
                 ttl_s: int) -> JobEvent | None:
    """Add the outbox writes for ``events`` to a transition: each event if someone listens, and
    ``batch.completed`` if this job is the one that completes its batch. Returns that batch event
    when this job may be the one (the script decides), for the live stream to publish too."""
    with writes.when(LISTENED):
        for event in events:
            writes.rpush(OUTBOX, event.around_snapshot())
    if job.batch_id and batch_size and job.status.is_terminal() and events:
        writes.batch_done = (event_key("batch-done", job.batch_id), job.id, batch_size, ttl_s)
        batch_event = JobEvent.create(type="batch.completed", tenant=job.tenant, subject=job.batch_id,
                                      batch_id=job.batch_id)
        with writes.when(COMPLETES_BATCH):
            writes.rpush(OUTBOX, batch_event.to_json())
        return batch_event
    return None
