"""JSON API v1 for webhooks: standing endpoints (secret shown once, rotation), their deliveries,
the dead-letter list and redelivery. Everything belongs to the current tenant; another
tenant's ids answer 404."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, Request, jsonify, request, url_for
from pydantic import BaseModel, ConfigDict, Field

from tasks.webhooks import endpoints as service
from tasks.webhooks.endpoints import Subscribed
from tasks.webhooks.models import EndpointCreate
from tasks.webhooks.tasks import enqueue_delivery
from web.extensions import current_tenant, pixelmill
from web.forms import DeliveryListQuery, read_json_body, read_query, read_webhook

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1")

SECRET_NOTE = "store this secret now: it is not shown again (rotate it to get a new one)"


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int | None = Field(None, ge=0, le=service.MAX_OVERLAP_S,
                                        description="how long the old secret keeps signing")


@bp.post("/webhooks")
def create_endpoint():
    rt = pixelmill.services
    body = EndpointCreate.model_validate(read_json_body(request))
    endpoint, secret = service.create_endpoint(rt.webhooks, rt.settings, tenant=current_tenant(), request=body)
    response = jsonify({**endpoint.public(), "secret": secret, "note": SECRET_NOTE})
    response.status_code = 201
    response.headers["Location"] = url_for("webhooks.show_endpoint", endpoint_id=endpoint.id)
    return response


@bp.get("/webhooks")
def list_endpoints():
    endpoints = pixelmill.services.webhooks.list_endpoints(current_tenant())
    return jsonify(webhooks=[e.public() for e in endpoints])


@bp.get("/webhooks/<endpoint_id>")
def show_endpoint(endpoint_id: str):
    return jsonify(_endpoint(endpoint_id).public())


@bp.delete("/webhooks/<endpoint_id>")
def delete_endpoint(endpoint_id: str):
    endpoint = service.delete_endpoint(pixelmill.services.webhooks, tenant=current_tenant(), endpoint_id=endpoint_id)
    return jsonify({**endpoint.public(), "deleted": True})


@bp.post("/webhooks/<endpoint_id>/rotate")
def rotate_secret(endpoint_id: str):
    rt = pixelmill.services
    body = RotateRequest.model_validate(read_json_body(request))
    endpoint, secret = service.rotate_secret(rt.webhooks, rt.settings, tenant=current_tenant(),
                                             endpoint_id=endpoint_id, overlap_s=body.overlap_seconds)
    return jsonify({**endpoint.public(), "secret": secret, "note": SECRET_NOTE})


@bp.post("/webhooks/<endpoint_id>/enable")
def enable_endpoint(endpoint_id: str):
    endpoint = service.enable_endpoint(pixelmill.services.webhooks, tenant=current_tenant(), endpoint_id=endpoint_id)
    return jsonify(endpoint.public())


@bp.get("/webhooks/<endpoint_id>/deliveries")
def endpoint_deliveries(endpoint_id: str):
    _endpoint(endpoint_id)
    query = read_query(request, DeliveryListQuery)
    deliveries = pixelmill.services.webhooks.deliveries_for_endpoint(endpoint_id, limit=query.limit)
    return jsonify(deliveries=[d.detail() for d in deliveries])


@bp.get("/deliveries/dead")
def dead_letters():
    query = read_query(request, DeliveryListQuery)
    deliveries = pixelmill.services.webhooks.dead_letters(current_tenant(), limit=query.limit)
    return jsonify(deliveries=[d.detail() for d in deliveries])


@bp.get("/deliveries/<delivery_id>")
def show_delivery(delivery_id: str):
    delivery = service.fetch_delivery(pixelmill.services.webhooks, tenant=current_tenant(), delivery_id=delivery_id)
    return jsonify(delivery.detail())


@bp.post("/deliveries/<delivery_id>/redeliver")
def redeliver(delivery_id: str):
    delivery = redeliver_for_tenant(delivery_id)
    return jsonify(delivery.detail()), 202


# --- helpers shared with the job API and the pages --------------------------------------------

def redeliver_for_tenant(delivery_id: str):
    rt = pixelmill.services
    return service.redeliver(rt.webhooks, tenant=current_tenant(), delivery_id=delivery_id,
                             enqueue=lambda d_id, schedule: enqueue_delivery(rt.settings, d_id, schedule))


@contextmanager
def webhook_subscription(req: Request, *, default_events: tuple[str, ...]) -> Iterator[Subscribed | None]:
    """The submission's ``webhook_url`` checked (SSRF guard: 422 now, not a silent failure later)
    and subscribed; undone if the submission then fails, so no unseen secret is left behind."""
    wanted = read_webhook(req, default_events=default_events)
    if wanted is None:
        yield None
        return
    rt = pixelmill.services
    subscribed = service.subscribe(rt.webhooks, rt.settings, tenant=current_tenant(), request=wanted)
    try:
        yield subscribed
    except BaseException:
        service.abandon(rt.webhooks, subscribed)
        raise


def webhook_info(subject_id: str) -> dict[str, Any]:
    """A job's (or batch's) own webhook and every delivery of its events, for the API and the page."""
    store = pixelmill.services.webhooks
    info: dict[str, Any] = {"webhook": None,
                            "deliveries": [d.summary() for d in store.deliveries_for_subject(subject_id)]}
    subscription = store.fetch_subscription(subject_id)
    if subscription is not None:
        endpoint = store.fetch_endpoint(subscription.endpoint_id)
        info["webhook"] = {"endpoint_id": subscription.endpoint_id, "events": list(subscription.events),
                           "url": endpoint.url if endpoint else None}
    return info


def _endpoint(endpoint_id: str):
    return service.fetch_endpoint(pixelmill.services.webhooks, tenant=current_tenant(), endpoint_id=endpoint_id)
