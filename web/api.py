"""JSON API v1: jobs and batches, each view with its operation declared (web.openapi)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request, send_file, url_for
from pydantic import Field

from tasks.errors import PixelmillError
from tasks.events import EVENT_TYPES, JOB_EVENTS
from tasks.jobs import Job as JobRecord
from tasks.jobs import JobParams, JobStatus
from tasks.present import Batch, Job, View, batch_view, job_view
from tasks.submit import submit_batch, submit_job
from web.extensions import base_url, current_tenant, fetch_batch, fetch_job, pixelmill
from web.forms import (MAX_DEADLINE_S, JobListQuery, read_deadline, read_params, read_query, read_uploads,
                       require_multipart)
from web.openapi import ID_PATTERNS, Json, Media, Multipart, Param, operation
from web.webhooks import DeliverySummary, SubjectWebhook, SubmissionWebhook, webhook_info, webhook_subscription

bp = Blueprint("api", __name__, url_prefix="/api/v1")


class ResultNotReady(PixelmillError):
    code = "not_ready"
    status = 409


class AlreadyFinished(PixelmillError):
    code = "already_finished"
    status = 409


class ResultBlocked(PixelmillError):
    code = "blocked"
    status = 403


# --- the answers: a job or a batch (tasks.present) with its webhook ------------------------------

class JobCreated(Job):
    """The job, queued: follow `links.self` (or its events, or a webhook) until it ends."""

    webhook: SubmissionWebhook | None = Field(None, description="present when webhook_url was sent")


class JobDetail(Job):
    """The job, with its own webhook and every delivery of its events."""

    webhook: SubjectWebhook | None = Field(description="the job's own webhook, if it was submitted with one")
    deliveries: list[DeliverySummary] = Field(description="every webhook delivery of this job's events")


class JobList(View):
    """Your jobs, the most recent first."""

    jobs: list[Job] = Field(description="the most recent first")


class BatchCreated(Batch):
    """The batch, queued: one job per image."""

    webhook: SubmissionWebhook | None = Field(None, description="present when webhook_url was sent")


class BatchDetail(Batch):
    """The batch and its jobs, with its webhook and deliveries."""

    webhook: SubjectWebhook | None
    deliveries: list[DeliverySummary]


def example_job() -> dict[str, Any]:
    """A job half-way through, as showJob answers: made by the real presenter, so it cannot drift."""
    at = 1767225600.0  # fixed, so the document is the same on every build
    job = JobRecord.create(tenant="local", params=JobParams(style="watercolor", upscale=2, seed=1234),
                           input_ref="0" * 64 + ".png", input_name="photo.jpg", deadline_s=3600)
    job.id, job.created_at, job.updated_at, job.expires_at = ID_PATTERNS["job_id"][1], at, at + 1.2, at + 3600
    job.status = JobStatus.GENERATING
    encode = job.stages["encode"]
    encode.started_at, encode.finished_at, encode.seconds, encode.attempts = at + 0.1, at + 0.9, 0.8, 1
    encode.done, encode.queue, encode.worker = True, "cpu", "cpu-1@host"
    generate = job.stages["generate"]
    generate.started_at, generate.attempts, generate.queue, generate.worker = at + 1.0, 1, "cpu", "cpu-1@host"
    progress = {"stage": "generate", "step": 3, "steps": 10, "at": int(at + 1.2)}
    return job_view(job, progress=progress, base_url="https://pixelmill.example", model=JobDetail, webhook=None,
                    deliveries=[]).model_dump(mode="json")


SUBMIT_ERRORS = {
    400: "no image, an unknown parameter, a params field that is not a JSON object, a bad deadline_s",
    413: "the file or the whole request is too large",
    415: "the body is not multipart/form-data",
    422: "a parameter out of range, an image refused (format, size, corrupt, decompression bomb), "
         "or a webhook_url refused",
    429: "over the per-minute submission limit or the cap on unfinished jobs (see Retry-After)",
}
CANCEL_AFTER = Param("Cancel-After", "header", {"type": "number", "minimum": 1, "maximum": MAX_DEADLINE_S},
                     "seconds the job may take in all (the same as the deadline_s field)", example=600)
DOWNLOAD = Param("download", "query", {"type": "string", "enum": ["1"]},
                 "1: served as an attachment (Content-Disposition) rather than inline")
PNG = Media("image/png", {"type": "string", "contentMediaType": "image/png"}, "the PNG image")


# --- jobs -----------------------------------------------------------------------------------------

@bp.post("/jobs")
@operation("createJob", "jobs", "Submit one image", ok=(202, Json(JobCreated)), params=(CANCEL_AFTER,),
           body=Multipart("image", curl_fields=(("image", "@photo.jpg"), ("style", "watercolor"), ("upscale", "2"))),
           description="Validates the upload and the parameters, stores the image and queues the job; it never "
                       "waits for a worker. Parameters go as form fields one by one, or together as a JSON "
                       "object in the `params` field (fields sent one by one win).",
           errors=SUBMIT_ERRORS, headers={"Location": "the job in the API"})
def create_job():
    rt = pixelmill.services
    require_multipart(request, field="image")
    params = read_params(request, strict=True)
    (upload,) = read_uploads(request, field="image", max_files=1)
    with webhook_subscription(request, default_events=JOB_EVENTS) as webhook:
        job = submit_job(rt, tenant=current_tenant(), upload=upload, params=params,
                         deadline_s=read_deadline(request, default=None),
                         webhook=webhook.subscription if webhook else None)
    # the secret only when this submission created the endpoint
    created = job_view(job, base_url=base_url(), model=JobCreated, webhook=webhook.public() if webhook else None)
    return created, {"Location": url_for("api.show_job", job_id=job.id)}


@bp.get("/jobs")
@operation("listJobs", "jobs", "Your most recent jobs", ok=(200, Json(JobList)), query=JobListQuery,
           errors={422: "limit is not an integer in range"})
def list_jobs():
    query = read_query(request, JobListQuery)
    jobs = pixelmill.services.store.recent(current_tenant(), limit=query.limit)
    return JobList(jobs=[job_view(job, base_url=base_url()) for job in jobs])


@bp.get("/jobs/<job_id>")
@operation("showJob", "jobs", "A job: status, stages, progress, audit, links",
           ok=(200, Json(JobDetail, example=example_job)), errors={404: "no such job (or it is another tenant's)"},
           description="Poll this (or follow the events stream, or use a webhook) until `status` is terminal: "
                       "succeeded, failed, blocked or canceled.")
def show_job(job_id: str):
    job = fetch_job(job_id)
    progress = pixelmill.services.store.fetch_progress(job_id)
    return job_view(job, progress=progress, base_url=base_url(), model=JobDetail, **webhook_info(job.id))


@bp.post("/jobs/<job_id>/cancel")
@operation("cancelJob", "jobs", "Cancel a job", ok=(200, Json(Job)),
           description="A queued job stops at once, a running one at its next step.",
           errors={404: "no such job", 409: "the job already ended (already_finished)"})
def cancel_job(job_id: str):
    job = fetch_job(job_id)
    if job.status.is_terminal():
        raise AlreadyFinished(f"the job already ended {job.status.value}; there is nothing to cancel")
    job = pixelmill.services.store.cancel(job_id)
    return job_view(job, base_url=base_url())


@bp.get("/jobs/<job_id>/result")
@operation("jobResult", "jobs", "The result image", ok=(200, PNG), params=(DOWNLOAD,),
           errors={403: "the safety audit blocked this result: it is never served (blocked)",
                   404: "no such job", 409: "the job has not succeeded (yet) (not_ready)"})
def job_result(job_id: str):
    job = fetch_job(job_id)
    if job.status is JobStatus.BLOCKED:
        raise ResultBlocked("this result was blocked by the safety audit and is never served")
    if job.status is not JobStatus.SUCCEEDED:
        raise ResultNotReady(f"the job is {job.status.value}; the result is served once it has succeeded")
    return _send_blob(job.outputs["result"], download_name=f"pixelmill-{job.id[:8]}.png")


@bp.get("/jobs/<job_id>/input")
@operation("jobInput", "jobs", "The normalised input image", ok=(200, PNG), params=(DOWNLOAD,),
           errors={404: "no such job"})
def job_input(job_id: str):
    job = fetch_job(job_id)
    return _send_blob(job.input_ref, download_name=f"input-{job.id[:8]}.png")


# --- batches --------------------------------------------------------------------------------------

@bp.post("/batches")
@operation("createBatch", "batches", "Submit several images with one set of parameters",
           ok=(202, Json(BatchCreated)), params=(CANCEL_AFTER,),
           body=Multipart("images", many=True,
                          curl_fields=(("images", "@front.jpg"), ("images", "@back.jpg"), ("style", "product"))),
           description="Every file is validated before any job is written: one bad file refuses the whole "
                       "batch, and its message starts with that file's name.",
           errors=SUBMIT_ERRORS, headers={"Location": "the batch in the API"})
def create_batch():
    rt = pixelmill.services
    require_multipart(request, field="images")
    params = read_params(request, strict=True)
    uploads = read_uploads(request, field="images", max_files=rt.settings.max_batch_files)
    with webhook_subscription(request, default_events=EVENT_TYPES) as webhook:
        batch, jobs = submit_batch(rt, tenant=current_tenant(), uploads=uploads, params=params,
                                   deadline_s=read_deadline(request, default=None),
                                   webhook=webhook.subscription if webhook else None)
    created = batch_view(batch, jobs, base_url=base_url(), model=BatchCreated,
                         webhook=webhook.public() if webhook else None)
    return created, {"Location": url_for("api.show_batch", batch_id=batch.id)}


@bp.get("/batches/<batch_id>")
@operation("showBatch", "batches", "A batch and its jobs", ok=(200, Json(BatchDetail)),
           errors={404: "no such batch"})
def show_batch(batch_id: str):
    batch, jobs = fetch_batch(batch_id)
    return batch_view(batch, jobs, base_url=base_url(), model=BatchDetail, **webhook_info(batch.id))


def _send_blob(ref: str, *, download_name: str):
    path = pixelmill.services.blobs.path(ref)
    as_attachment = request.args.get("download") == "1"
    response = send_file(path, mimetype="image/png", as_attachment=as_attachment,
                         download_name=download_name, max_age=3600)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
