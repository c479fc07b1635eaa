"""Submitting work: validate the upload, store the original, write the job, enqueue its chain.

Nothing here waits on a worker. If the chain cannot be enqueued the job is marked failed
(never left half-written) and the error goes back to the caller.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from kombu.exceptions import OperationalError

from safety.errors import InputRejected
from safety.validate import UploadLimits, validate_image
from tasks.errors import PixelmillError
from tasks.jobs import Batch, Job, JobParams, new_id
from tasks.pipeline import enqueue
from tasks.services import Services
from tasks.webhooks.models import Subscription

log = logging.getLogger(__name__)


class QueueUnavailable(PixelmillError):
    code = "queue_unavailable"
    status = 503


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


def upload_limits(rt: Services) -> UploadLimits:
    s = rt.settings
    return UploadLimits(max_bytes=s.max_upload_bytes, max_side=s.max_side, max_pixels=s.max_pixels)


def with_seed(params: JobParams) -> JobParams:
    """A job always records the seed it ran with, so it can be reproduced."""
    if params.seed is not None:
        return params
    return params.model_copy(update={"seed": secrets.randbelow(2**32)})


def enforce_limits(rt: Services, *, tenant: str, jobs: int) -> None:
    """Per-tenant submission rate and unfinished-job cap (429 with Retry-After beyond)."""
    rt.tenants.check_limits(tenant, per_minute=rt.settings.rate_limit_per_minute, adding=jobs,
                            limit=rt.settings.max_active_jobs)


def submit_job(rt: Services, *, tenant: str, upload: Upload, params: JobParams,
               deadline_s: float | None = None, webhook: Subscription | None = None) -> Job:
    enforce_limits(rt, tenant=tenant, jobs=1)
    job = _prepare(rt, tenant=tenant, upload=upload, params=with_seed(params), deadline_s=deadline_s)
    if webhook is not None:  # before the job exists, so its first event already finds it
        rt.webhooks.save_subscription(job.id, webhook)
    rt.store.create(job)
    _enqueue(rt, [job])
    return job


def submit_batch(rt: Services, *, tenant: str, uploads: list[Upload], params: JobParams,
                 deadline_s: float | None = None, webhook: Subscription | None = None) -> tuple[Batch, list[Job]]:
    """N jobs under one batch id. Every upload is validated before any job is written."""
    enforce_limits(rt, tenant=tenant, jobs=len(uploads))
    batch_id = new_id()
    jobs = [
        _prepare(rt, tenant=tenant, upload=upload, params=with_seed(params), batch_id=batch_id, deadline_s=deadline_s)
        for upload in uploads
    ]
    batch = Batch(id=batch_id, tenant=tenant, job_ids=[job.id for job in jobs])
    if webhook is not None:  # the batch's webhook hears its jobs' events and batch.completed
        rt.webhooks.save_subscription(batch.id, webhook)
    rt.store.create_batch(batch, jobs)
    _enqueue(rt, jobs)
    return batch, jobs


def _prepare(rt: Services, *, tenant: str, upload: Upload, params: JobParams, batch_id: str | None = None,
             deadline_s: float | None = None) -> Job:
    try:
        clean = validate_image(upload.data, limits=upload_limits(rt))
    except InputRejected as e:
        if batch_id is None:
            raise
        raise InputRejected(e.code, f"{upload.name}: {e} (nothing in this batch was queued)", status=e.status) from e
    ref = rt.blobs.save(clean.png, ext="png")
    return Job.create(tenant=tenant, params=params, input_ref=ref, input_name=upload.name, batch_id=batch_id,
                      deadline_s=deadline_s or rt.settings.default_job_deadline_s)


def _enqueue(rt: Services, jobs: list[Job]) -> None:
    for i, job in enumerate(jobs):
        try:
            enqueue(job, rt.settings)
        except OperationalError as e:
            log.error("could not enqueue job %s: %s", job.id, e)
            for unqueued in jobs[i:]:
                rt.store.fail(unqueued.id, code="queue_unavailable", message="the job queue was unavailable; submit again")
            raise QueueUnavailable("the job queue is unavailable right now; try again in a minute") from e
