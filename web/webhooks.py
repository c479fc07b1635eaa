"""JSON API v1 for webhooks: standing endpoints (secret shown once, rotation), their deliveries,
the dead-letter list and redelivery. Everything belongs to the current tenant; another
tenant's ids answer 404."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from flask import Blueprint, Request, request, url_for
from pydantic import BaseModel, ConfigDict, Field

from tasks.present import Timestamp, View
from tasks.webhooks import endpoints as service
from tasks.webhooks.endpoints import Subscribed
from tasks.webhooks.models import EndpointCreate
from tasks.webhooks.tasks import enqueue_delivery
from web.extensions import current_tenant, pixelmill
from web.forms import DeliveryListQuery, read_json_body, read_query, read_webhook
from web.openapi import Json, operation

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1")

SECRET_NOTE = "store this secret now: it is not shown again (rotate it to get a new one)"


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int | None = Field(None, ge=0, le=service.MAX_OVERLAP_S,
                                        description="how long the old secret keeps signing")


# --- the answers (built from Endpoint.public(), Delivery.summary() and .detail()) -------------

class Endpoint(View):
    """A webhook endpoint; never its secret."""

    id: str
    url: str
    events: list[str]
    description: str
    standing: bool = Field(description="true: hears every event of the tenant its filter lets through; "
                                       "false: made for the jobs/batches that named its URL")
    disabled: bool
    disabled_reason: str | None
    created_at: Timestamp
    secret_created_at: Timestamp | None
    previous_secret_expires_at: Timestamp | None = Field(description="after a rotation: until when the old "
                                                                     "secret still signs")


class EndpointWithSecret(Endpoint):
    """The endpoint with its signing secret: the only time it is shown."""

    secret: str = Field(description="whsec_…: verify deliveries with it; shown only now")
    note: str


class EndpointDeleted(Endpoint):
    """The endpoint as it was; it is gone now."""

    deleted: Literal[True]


class EndpointList(View):
    webhooks: list[Endpoint]


class DeliverySummary(View):
    id: str
    event: str = Field(examples=["job.completed"])
    webhook_id: str = Field(description="the webhook-id header: the same on every attempt and redelivery")
    job_id: str | None
    batch_id: str | None
    endpoint_id: str
    url: str
    status: Literal["pending", "delivered", "dead"]
    attempts: int
    last_status_code: int | None
    last_latency_ms: float | None
    last_error: str | None
    created_at: Timestamp
    next_attempt_at: Timestamp | None
    delivered_at: Timestamp | None
    dead_at: Timestamp | None


class Attempt(View):
    at: Timestamp
    status_code: int | None
    latency_ms: float | None
    error: str | None
    retry_in_s: float | None


class DeliveryDetail(DeliverySummary):
    """A delivery and its attempts."""

    attempt_log: list[Attempt] = Field(description="the latest attempts, oldest first")


class DeliveryList(View):
    deliveries: list[DeliveryDetail]


class SubmissionWebhook(View):
    """The webhook a submission asked for with ``webhook_url``."""

    endpoint_id: str
    url: str
    events: list[str]
    secret: str | None = Field(None, description="whsec_…; only when this submission created the endpoint: "
                                                 "store it, it is not shown again")
    note: str | None = None


class SubjectWebhook(View):
    endpoint_id: str
    events: list[str]
    url: str | None


NOT_FOUND = {404: "no such endpoint"}


@bp.post("/webhooks")
@operation("createWebhook", "webhooks", "Add a standing webhook endpoint", ok=(201, Json(EndpointWithSecret)),
           body=Json(EndpointCreate, {"url": "https://example.com/hooks/pixelmill",
                                      "events": ["job.completed", "job.failed"], "description": "CMS import"}),
           description="The URL is checked now (SSRF guard: public addresses only unless allowed). The "
                       "signing secret is in this answer only.",
           errors={400: "the body is not a JSON object",
                   422: "a field out of range, an unknown event, the URL refused, or the tenant already has "
                        "PIXELMILL_WEBHOOK_MAX_ENDPOINTS endpoints (too_many_webhooks)"},
           headers={"Location": "the endpoint in the API"})
def create_endpoint():
    rt = pixelmill.services
    body = EndpointCreate.model_validate(read_json_body(request))
    endpoint, secret = service.create_endpoint(rt.webhooks, rt.settings, tenant=current_tenant(), request=body)
    return (EndpointWithSecret(**endpoint.public(), secret=secret, note=SECRET_NOTE),
            {"Location": url_for("webhooks.show_endpoint", endpoint_id=endpoint.id)})


@bp.get("/webhooks")
@operation("listWebhooks", "webhooks", "Your webhook endpoints", ok=(200, Json(EndpointList)))
def list_endpoints():
    endpoints = pixelmill.services.webhooks.list_endpoints(current_tenant())
    return EndpointList(webhooks=[e.public() for e in endpoints])


@bp.get("/webhooks/<endpoint_id>")
@operation("showWebhook", "webhooks", "A webhook endpoint", ok=(200, Json(Endpoint)), errors=NOT_FOUND)
def show_endpoint(endpoint_id: str):
    return Endpoint(**_endpoint(endpoint_id).public())


@bp.delete("/webhooks/<endpoint_id>")
@operation("deleteWebhook", "webhooks", "Delete a webhook endpoint", ok=(200, Json(EndpointDeleted)),
           errors=NOT_FOUND)
def delete_endpoint(endpoint_id: str):
    endpoint = service.delete_endpoint(pixelmill.services.webhooks, tenant=current_tenant(), endpoint_id=endpoint_id)
    return EndpointDeleted(**endpoint.public(), deleted=True)


@bp.post("/webhooks/<endpoint_id>/rotate")
@operation("rotateWebhookSecret", "webhooks", "Rotate an endpoint's signing secret",
           ok=(200, Json(EndpointWithSecret)), body=Json(RotateRequest, {"overlap_seconds": 3600}, required=False),
           description="Deliveries carry both signatures until the old secret expires, so receivers can "
                       "switch without dropping any.",
           errors={400: "the body is not a JSON object", 404: "no such endpoint", 422: "overlap_seconds out of range"})
def rotate_secret(endpoint_id: str):
    rt = pixelmill.services
    body = RotateRequest.model_validate(read_json_body(request))
    endpoint, secret = service.rotate_secret(rt.webhooks, rt.settings, tenant=current_tenant(),
                                             endpoint_id=endpoint_id, overlap_s=body.overlap_seconds)
    return EndpointWithSecret(**endpoint.public(), secret=secret, note=SECRET_NOTE)


@bp.post("/webhooks/<endpoint_id>/enable")
@operation("enableWebhook", "webhooks", "Enable an endpoint again (after a 410 disabled it)",
           ok=(200, Json(Endpoint)), errors=NOT_FOUND)
def enable_endpoint(endpoint_id: str):
    endpoint = service.enable_endpoint(pixelmill.services.webhooks, tenant=current_tenant(), endpoint_id=endpoint_id)
    return Endpoint(**endpoint.public())


@bp.get("/webhooks/<endpoint_id>/deliveries")
@operation("listWebhookDeliveries", "webhooks", "Deliveries to an endpoint", ok=(200, Json(DeliveryList)),
           query=DeliveryListQuery, errors={404: "no such endpoint", 422: "limit is not an integer in range"})
def endpoint_deliveries(endpoint_id: str):
    _endpoint(endpoint_id)
    query = read_query(request, DeliveryListQuery)
    deliveries = pixelmill.services.webhooks.deliveries_for_endpoint(endpoint_id, limit=query.limit)
    return DeliveryList(deliveries=[d.detail() for d in deliveries])


@bp.get("/deliveries/dead")
@operation("listDeadLetters", "webhooks", "The dead-letter list: deliveries that ran out of tries",
           ok=(200, Json(DeliveryList)), query=DeliveryListQuery, errors={422: "limit is not an integer in range"})
def dead_letters():
    query = read_query(request, DeliveryListQuery)
    deliveries = pixelmill.services.webhooks.dead_letters(current_tenant(), limit=query.limit)
    return DeliveryList(deliveries=[d.detail() for d in deliveries])


@bp.get("/deliveries/<delivery_id>")
@operation("showDelivery", "webhooks", "A delivery and its attempts", ok=(200, Json(DeliveryDetail)),
           errors={404: "no such delivery"})
def show_delivery(delivery_id: str):
    delivery = service.fetch_delivery(pixelmill.services.webhooks, tenant=current_tenant(), delivery_id=delivery_id)
    return DeliveryDetail(**delivery.detail())


@bp.post("/deliveries/<delivery_id>/redeliver")
@operation("redeliver", "webhooks", "Send a delivery again (same webhook-id, so receivers dedupe)",
           ok=(202, Json(DeliveryDetail)),
           errors={404: "no such delivery",
                   409: "it is already pending, or its endpoint was deleted or is disabled (conflict)"})
def redeliver(delivery_id: str):
    return DeliveryDetail(**redeliver_for_tenant(delivery_id).detail())


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
