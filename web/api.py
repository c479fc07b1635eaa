"""JSON API v1: jobs and batches, each view with its operation declared (web.openapi)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, request, send_file, url_for
from pydantic import Field

from tasks.errors import JobNotFound, PixelmillError
from tasks.idempotency import MAX_KEY_LENGTH, Claim, IdempotencyStore, fingerprint
from tasks.events import EVENT_TYPES, JOB_EVENTS
from tasks.jobs import Job as JobRecord
from tasks.jobs import JobParams, JobStatus
from tasks.present import Batch, Job, View, batch_view, job_view
from tasks.inputs import read_image_value
from tasks.submit import submit_batch, submit_job
from web.extensions import base_url, current_tenant, fetch_batch, fetch_job, pixelmill
from web.forms import (MAX_DEADLINE_S, JobListQuery, is_json, read_deadline, read_json_inputs, read_json_submission,
                       read_params, read_query, read_uploads, require_submission)
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
    400: "no image, an image value that is neither an https URL nor a data URI (or bad base64), an unknown "
         "parameter, a params field or body that is not a JSON object, a bad deadline_s, a bad Idempotency-Key",
    413: "the file, the data URI or the whole request is too large",
    415: "the body is neither multipart/form-data nor application/json",
    422: "a parameter out of range, an image refused (format, size, corrupt, decompression bomb), an image URL "
         "refused by the outbound guard (input_url_refused) or whose host does not resolve (input_unreachable), "
         "a webhook_url refused, an Idempotency-Key already used for a different request, or a model, LoRA "
         "or ControlNet the library does not have or cannot use for this model (the message lists the "
         "choices or says why), or face_restore while the server has no face restorer or detector "
         "(face_restore_unavailable: the message names PIXELMILL_FACE_RESTORER or PIXELMILL_FACE_DETECTOR)",
    429: "over the per-minute submission limit or the cap on unfinished jobs (see Retry-After)",
}
IDEMPOTENCY_KEY = Param("Idempotency-Key", "header", {"type": "string", "maxLength": MAX_KEY_LENGTH},
                        "a key of yours for this request: a retry with the same key within 24 h answers what the "
                        "first one created instead of creating it again (a different request with the same key: "
                        "422; while the first is still being served: 409)", example="5f0c6f0e-retry-safe")
IDEMPOTENCY_ERRORS = {409: "a request with the same Idempotency-Key is still being served (idempotency_key_in_use)"}
CANCEL_AFTER = Param("Cancel-After", "header", {"type": "number", "minimum": 1, "maximum": MAX_DEADLINE_S},
                     "seconds the job may take in all (the same as the deadline_s field)", example=600)
DOWNLOAD = Param("download", "query", {"type": "string", "enum": ["1"]},
                 "1: served as an attachment (Content-Disposition) rather than inline")
PNG = Media("image/png", {"type": "string", "contentMediaType": "image/png"}, "the PNG image")


# --- jobs -----------------------------------------------------------------------------------------

@bp.post("/jobs")
@operation("createJob", "jobs", "Submit one image", ok=(202, Json(JobCreated)), params=(CANCEL_AFTER, IDEMPOTENCY_KEY),
           body=Multipart("image", curl_fields=(("image", "@photo.jpg"), ("style", "watercolor"), ("upscale", "2")),
                          json_example={"image": "https://images.example.com/photo.jpg", "style": "watercolor",
                                        "upscale": 2}),
           description="Validates the upload and the parameters, stores the image and queues the job; it never "
                       "waits for a worker. As multipart/form-data: the file in `image`, the parameters as form "
                       "fields one by one, or together as a JSON object in the `params` field (fields sent one "
                       "by one win). As application/json: `image` is an https:// URL or a "
                       "`data:image/…;base64,` URI, the parameters are members of the same object. A URL is "
                       "checked now (public addresses only) and fetched on the workers' io queue before the job "
                       "runs: the job stays `queued` meanwhile, and fails with `input_unreachable`, "
                       "`input_too_large` or `input_not_image` if the image cannot be had.",
           errors={**SUBMIT_ERRORS, **IDEMPOTENCY_ERRORS}, headers={"Location": "the job in the API"})
def create_job():
    rt = pixelmill.services
    require_submission(request, field="image")
    params = read_params(request, strict=True)
    (upload,) = read_inputs("image", max_files=1)
    with idempotent("jobs", [upload]) as done:
        if done.replay is not None:  # a retry: what the first request created
            job = fetch_job(done.replay)
            return (job_view(job, base_url=base_url(), model=JobCreated),
                    {"Location": url_for("api.show_job", job_id=job.id)})
        with webhook_subscription(request, default_events=JOB_EVENTS) as webhook:
            job = submit_job(rt, tenant=current_tenant(), upload=upload, params=params,
                             deadline_s=read_deadline(request, default=None),
                             webhook=webhook.subscription if webhook else None)
        done(job.id)
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
           errors={404: "no such job", 409: "the input is still being fetched from its URL, or could not be "
                                             "(not_ready)"})
def job_input(job_id: str):
    job = fetch_job(job_id)
    if not job.input_ref:
        raise ResultNotReady(f"the job's input is fetched from its URL before it runs; it is {job.status.value}"
                             + (" and has none" if job.status.is_terminal() else ", not fetched yet"))
    return _send_blob(job.input_ref, download_name=f"input-{job.id[:8]}.png")


@bp.get("/jobs/<job_id>/control/<control_type>")
@operation("jobControlMap", "jobs", "A control map the job's ControlNet was guided by", ok=(200, PNG),
           params=(DOWNLOAD,), errors={404: "no such job, or it has no map of that type (yet)"})
def job_control_map(job_id: str, control_type: str):
    job = fetch_job(job_id)
    ref = job.outputs.get(f"control_{control_type}")
    if ref is None:
        raise JobNotFound(f"job {job_id} has no {control_type!r} control map (it asked for none, or encode has "
                          "not made it yet)")
    return _send_blob(ref, download_name=f"control-{control_type}-{job.id[:8]}.png")


# --- batches --------------------------------------------------------------------------------------

@bp.post("/batches")
@operation("createBatch", "batches", "Submit several images with one set of parameters",
           ok=(202, Json(BatchCreated)), params=(CANCEL_AFTER, IDEMPOTENCY_KEY),
           body=Multipart("images", many=True,
                          curl_fields=(("images", "@front.jpg"), ("images", "@back.jpg"), ("style", "product")),
                          json_example={"images": ["https://images.example.com/front.jpg",
                                                   "https://images.example.com/back.jpg"], "style": "product"}),
           description="Every file (data URI) is validated and every URL checked before any job is written: one "
                       "bad one refuses the whole batch, and its message starts with that file's name (or "
                       "`images[i]`). As application/json, `images` is a list of https:// URLs and "
                       "`data:image/…;base64,` URIs; each URL is fetched on the io queue by its own job, which "
                       "fails alone if its image cannot be had.",
           errors={**SUBMIT_ERRORS, **IDEMPOTENCY_ERRORS}, headers={"Location": "the batch in the API"})
def create_batch():
    rt = pixelmill.services
    require_submission(request, field="images")
    params = read_params(request, strict=True)
    uploads = read_inputs("images", max_files=rt.settings.max_batch_files)
    with idempotent("batches", uploads) as done:
        if done.replay is not None:  # a retry: what the first request created
            batch, jobs = fetch_batch(done.replay)
            return (batch_view(batch, jobs, base_url=base_url(), model=BatchCreated),
                    {"Location": url_for("api.show_batch", batch_id=batch.id)})
        with webhook_subscription(request, default_events=EVENT_TYPES) as webhook:
            batch, jobs = submit_batch(rt, tenant=current_tenant(), uploads=uploads, params=params,
                                       deadline_s=read_deadline(request, default=None),
                                       webhook=webhook.subscription if webhook else None)
        done(batch.id)
    created = batch_view(batch, jobs, base_url=base_url(), model=BatchCreated,
                         webhook=webhook.public() if webhook else None)
    return created, {"Location": url_for("api.show_batch", batch_id=batch.id)}


@bp.get("/batches/<batch_id>")
@operation("showBatch", "batches", "A batch and its jobs", ok=(200, Json(BatchDetail)),
           errors={404: "no such batch"})
def show_batch(batch_id: str):
    batch, jobs = fetch_batch(batch_id)
    return batch_view(batch, jobs, base_url=base_url(), model=BatchDetail, **webhook_info(batch.id))


def read_inputs(field: str, *, max_files: int) -> list:
    """The image(s) of a submission: the files of a multipart body, or the https URLs (checked, fetched
    later on the io queue) and data URIs (decoded) of a JSON one (tasks.inputs)."""
    if is_json(request):
        rt = pixelmill.services
        return read_json_inputs(request, field=field, max_files=max_files,
                                read=lambda value, name: read_image_value(value, rt=rt, name=name))
    return read_uploads(request, field=field, max_files=max_files)


class Idempotent:
    """What ``idempotent`` yields: ``replay`` is the id a first request made; else call it with
    the id this request made."""

    def __init__(self, store: IdempotencyStore | None, claim: Claim | None) -> None:
        self.store, self.claim = store, claim
        self.replay = claim.created if claim else None

    def __call__(self, created: str) -> None:
        if self.store and self.claim:
            self.store.complete(self.claim, created)
            self.claim = None


@contextmanager
def idempotent(route: str, uploads: list) -> Iterator[Idempotent]:
    """Honour an Idempotency-Key header (tasks.idempotency); a request that fails frees its key."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        yield Idempotent(None, None)
        return
    store = IdempotencyStore(pixelmill.services.redis)
    if is_json(request):  # the JSON object canonically (sorted keys, no spaces): member order does not matter
        canonical = json.dumps(read_json_submission(request), sort_keys=True, separators=(",", ":"))
        fields = {"json": [hashlib.sha256(canonical.encode()).hexdigest()]}
        files = []
    else:
        fields = request.form.to_dict(flat=False)
        files = [(u.name, u.data) for u in uploads]
    fields["Cancel-After"] = request.headers.getlist("Cancel-After")
    claim = store.claim(tenant=current_tenant(), route=route, key=key,
                        fingerprint=fingerprint(fields=fields, files=files))
    done = Idempotent(store, claim)
    try:
        yield done
    finally:
        if done.claim is not None and done.replay is None:  # failed before it created anything
            store.release(claim)


def _send_blob(ref: str, *, download_name: str):
    path = pixelmill.services.blobs.path(ref)
    as_attachment = request.args.get("download") == "1"
    response = send_file(path, mimetype="image/png", as_attachment=as_attachment,
                         download_name=download_name, max_age=3600)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
