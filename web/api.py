"""JSON API v1."""

from __future__ import annotations

from flask import Blueprint, jsonify, request, send_file, url_for

from tasks.errors import PixelmillError
from tasks.events import EVENT_TYPES, JOB_EVENTS
from tasks.jobs import JobStatus
from tasks.present import batch_payload, job_payload
from tasks.submit import submit_batch, submit_job
from web.extensions import base_url, current_tenant, fetch_batch, fetch_job, pixelmill
from web.forms import JobListQuery, read_deadline, read_params, read_query, read_uploads, require_multipart
from web.webhooks import webhook_info, webhook_subscription

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


@bp.post("/jobs")
def create_job():
    rt = pixelmill.services
    require_multipart(request, field="image")
    params = read_params(request, strict=True)
    (upload,) = read_uploads(request, field="image", max_files=1)
    with webhook_subscription(request, default_events=JOB_EVENTS) as webhook:
        job = submit_job(rt, tenant=current_tenant(), upload=upload, params=params,
                         deadline_s=read_deadline(request, default=None),
                         webhook=webhook.subscription if webhook else None)
    payload = job_payload(job, base_url=base_url())
    if webhook:
        payload["webhook"] = webhook.public()  # the secret only when this submission created the endpoint
    response = jsonify(payload)
    response.status_code = 202
    response.headers["Location"] = url_for("api.show_job", job_id=job.id)
    return response


@bp.get("/jobs")
def list_jobs():
    query = read_query(request, JobListQuery)
    jobs = pixelmill.services.store.recent(current_tenant(), limit=query.limit)
    return jsonify(jobs=[job_payload(job, base_url=base_url()) for job in jobs])


@bp.get("/jobs/<job_id>")
def show_job(job_id: str):
    job = fetch_job(job_id)
    progress = pixelmill.services.store.fetch_progress(job_id)
    return jsonify({**job_payload(job, progress=progress, base_url=base_url()), **webhook_info(job.id)})


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    """Stop a job: a queued one at once, a running one at its next step."""
    job = fetch_job(job_id)
    if job.status.is_terminal():
        raise AlreadyFinished(f"the job already ended {job.status.value}; there is nothing to cancel")
    job = pixelmill.services.store.cancel(job_id)
    return jsonify(job_payload(job, base_url=base_url()))


@bp.get("/jobs/<job_id>/result")
def job_result(job_id: str):
    job = fetch_job(job_id)
    if job.status is JobStatus.BLOCKED:
        raise ResultBlocked("this result was blocked by the safety audit and is never served")
    if job.status is not JobStatus.SUCCEEDED:
        raise ResultNotReady(f"the job is {job.status.value}; the result is served once it has succeeded")
    return _send_blob(job.outputs["result"], download_name=f"pixelmill-{job.id[:8]}.png")


@bp.get("/jobs/<job_id>/input")
def job_input(job_id: str):
    job = fetch_job(job_id)
    return _send_blob(job.input_ref, download_name=f"input-{job.id[:8]}.png")


@bp.post("/batches")
def create_batch():
    rt = pixelmill.services
    require_multipart(request, field="images")
    params = read_params(request, strict=True)
    uploads = read_uploads(request, field="images", max_files=rt.settings.max_batch_files)
    with webhook_subscription(request, default_events=EVENT_TYPES) as webhook:
        batch, jobs = submit_batch(rt, tenant=current_tenant(), uploads=uploads, params=params,
                                   deadline_s=read_deadline(request, default=None),
                                   webhook=webhook.subscription if webhook else None)
    payload = batch_payload(batch, jobs, base_url=base_url())
    if webhook:
        payload["webhook"] = webhook.public()
    response = jsonify(payload)
    response.status_code = 202
    response.headers["Location"] = url_for("api.show_batch", batch_id=batch.id)
    return response


@bp.get("/batches/<batch_id>")
def show_batch(batch_id: str):
    batch, jobs = fetch_batch(batch_id)
    return jsonify({**batch_payload(batch, jobs, base_url=base_url()), **webhook_info(batch.id)})


def _send_blob(ref: str, *, download_name: str):
    path = pixelmill.services.blobs.path(ref)
    as_attachment = request.args.get("download") == "1"
    response = send_file(path, mimetype="image/png", as_attachment=as_attachment,
                         download_name=download_name, max_age=3600)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
