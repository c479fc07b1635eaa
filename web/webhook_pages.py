"""The webhook settings page: endpoints (create — the secret shown once —, rotate, enable,
delete) and dead letters with a Redeliver button. Plain server-rendered forms."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for

from tasks.events import EVENT_TYPES
from tasks.webhooks import endpoints as service
from tasks.webhooks.models import EndpointCreate
from web.extensions import current_tenant, pixelmill
from web.webhooks import redeliver_for_tenant

bp = Blueprint("webhook_pages", __name__, url_prefix="/settings/webhooks")


@bp.get("")
def index():
    store = pixelmill.services.webhooks
    tenant = current_tenant()
    return render_template("webhooks.html", endpoints=[e.public() for e in store.list_endpoints(tenant)],
                           dead=[d.summary() for d in store.dead_letters(tenant, limit=100)],
                           event_types=EVENT_TYPES)


@bp.post("")
def create():
    rt = pixelmill.services
    body = EndpointCreate(url=request.form.get("url", ""), events=request.form.getlist("events") or None,
                          description=request.form.get("description", ""))
    endpoint, secret = service.create_endpoint(rt.webhooks, rt.settings, tenant=current_tenant(), request=body)
    return render_template("webhook_secret.html", endpoint=endpoint.public(), secret=secret, rotated=False), 201


@bp.post("/<endpoint_id>/rotate")
def rotate(endpoint_id: str):
    rt = pixelmill.services
    endpoint, secret = service.rotate_secret(rt.webhooks, rt.settings, tenant=current_tenant(), endpoint_id=endpoint_id)
    return render_template("webhook_secret.html", endpoint=endpoint.public(), secret=secret, rotated=True)


@bp.post("/<endpoint_id>/enable")
def enable(endpoint_id: str):
    service.enable_endpoint(pixelmill.services.webhooks, tenant=current_tenant(), endpoint_id=endpoint_id)
    return redirect(url_for("webhook_pages.index"), code=303)


@bp.post("/<endpoint_id>/delete")
def delete(endpoint_id: str):
    service.delete_endpoint(pixelmill.services.webhooks, tenant=current_tenant(), endpoint_id=endpoint_id)
    return redirect(url_for("webhook_pages.index"), code=303)


@bp.post("/deliveries/<delivery_id>/redeliver")
def redeliver(delivery_id: str):
    redeliver_for_tenant(delivery_id)
    target = request.form.get("next", "")
    if target.startswith("/") and not target.startswith("//"):
        return redirect(target, code=303)
    return redirect(url_for("webhook_pages.index"), code=303)
