"""The HTML pages: upload form, job and batch pages, gallery."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for

from tasks.jobs import JobParams
from tasks.present import batch_payload, job_payload
from tasks.submit import submit_batch, submit_job
from web.extensions import base_url, current_tenant, fetch_batch, fetch_job, pixelmill
from web.forms import read_deadline, read_params, read_uploads
from web.models_api import model_list
from tasks.events import EVENT_TYPES, JOB_EVENTS
from web.webhooks import webhook_info, webhook_subscription
from workers.styles import STYLES

bp = Blueprint("ui", __name__)


@bp.get("/")
def index():
    rt = pixelmill.services
    recent = rt.store.recent(current_tenant(), limit=8)
    library = model_list(rt.settings)  # the same choices GET /api/v1/models lists
    usable = [m for m in library.models if m.usable]
    return render_template(
        "index.html",
        styles=STYLES,
        defaults=JobParams(),
        diffusion_enabled=bool(rt.settings.diffusion_model) or any(m.kind == "checkpoint" for m in usable),
        library=library,
        checkpoints=[m for m in usable if m.kind == "checkpoint"],
        loras=[m for m in usable if m.kind == "lora"],
        control_types=sorted({m.control_type for m in usable if m.kind == "controlnet" and m.control_type}),
        recent=[job_payload(job) for job in recent],
        webhook_events=EVENT_TYPES,
    )


@bp.post("/submit")
def submit():
    rt = pixelmill.services
    params = read_params(request, strict=False)
    uploads = read_uploads(request, field="images", max_files=rt.settings.max_batch_files)
    single = len(uploads) == 1
    with webhook_subscription(request, default_events=JOB_EVENTS if single else EVENT_TYPES) as webhook:
        subscription = webhook.subscription if webhook else None
        if single:
            job = submit_job(rt, tenant=current_tenant(), upload=uploads[0], params=params,
                             deadline_s=read_deadline(request, default=None), webhook=subscription)
            target = url_for("ui.show_job", job_id=job.id)
        else:
            batch, _ = submit_batch(rt, tenant=current_tenant(), uploads=uploads, params=params,
                                    deadline_s=read_deadline(request, default=None), webhook=subscription)
            target = url_for("ui.show_batch", batch_id=batch.id)
    if webhook and webhook.secret:  # a new endpoint: its secret is shown this once, then on to the job
        return render_template("webhook_secret.html", endpoint=webhook.endpoint.public(), secret=webhook.secret,
                               rotated=False, next_url=target)
    return redirect(target, code=303)


@bp.get("/jobs/<job_id>")
def show_job(job_id: str):
    job = fetch_job(job_id)
    progress = pixelmill.services.store.fetch_progress(job_id)
    return render_template("job.html", job=job_payload(job, progress=progress, base_url=base_url()),
                           deliveries=webhook_info(job.id)["deliveries"])


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    job = fetch_job(job_id)
    if not job.status.is_terminal():
        pixelmill.services.store.cancel(job_id)
    return redirect(url_for("ui.show_job", job_id=job_id), code=303)


@bp.get("/batches/<batch_id>")
def show_batch(batch_id: str):
    batch, jobs = fetch_batch(batch_id)
    return render_template("batch.html", batch=batch_payload(batch, jobs, base_url=base_url()))


@bp.get("/gallery")
def gallery():
    jobs = pixelmill.services.store.recent(current_tenant(), limit=60)
    return render_template("gallery.html", jobs=[job_payload(job) for job in jobs])
