"""What a tenant does with webhooks: register, rotate, enable, delete endpoints; subscribe a
job or a batch to a URL; redeliver a delivery. Every URL passes the outbound guard here,
so a refused URL is an error at the moment it is given."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from safety.outbound import OutboundRefused, check_url
from tasks.settings import Settings
from tasks.webhooks.errors import DeliveryConflict, TooManyEndpoints, WebhookNotFound, WebhookUrlRefused
from tasks.webhooks.models import (Delivery, Endpoint, EndpointCreate, Secret, Subscription, SubscriptionRequest,
                                   normalise_url)
from tasks.webhooks.signing import new_secret
from tasks.webhooks.store import WebhookStore

MAX_OVERLAP_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Subscribed:
    """A job's or batch's subscription, with the endpoint's secret when it was just created."""

    endpoint: Endpoint
    subscription: Subscription
    secret: str | None = None  # shown once: only when this request created the endpoint

    def public(self) -> dict:
        data = {"endpoint_id": self.endpoint.id, "url": self.endpoint.url, "events": list(self.subscription.events)}
        if self.secret:
            data["secret"] = self.secret
            data["note"] = "store this secret now: it is not shown again (rotate it to get a new one)"
        return data


def check_webhook_url(url: str, settings: Settings) -> str:
    """The URL as it will be called and stored (normalised: one spelling per URL), or
    ``WebhookUrlRefused`` saying why not."""
    try:
        return normalise_url(check_url(url, allow_private=settings.webhook_allow_private).url)
    except OutboundRefused as e:
        raise WebhookUrlRefused(f"webhook_url refused: {e}") from e


def create_endpoint(store: WebhookStore, settings: Settings, *, tenant: str,
                    request: EndpointCreate) -> tuple[Endpoint, str]:
    """A standing endpoint: it hears every event of the tenant that its filter lets through, so
    every one costs a POST per event; a tenant may have ``webhook_max_endpoints`` of them."""
    url = check_webhook_url(request.url, settings)
    secret = new_secret()
    endpoint = Endpoint.create(tenant=tenant, url=url, events=list(request.events or ()), secret=secret,
                               description=request.description, standing=True)
    created = store.create_endpoint(endpoint, max_standing=settings.webhook_max_endpoints)
    if created is None:
        limit = settings.webhook_max_endpoints
        raise TooManyEndpoints(f"you already have {limit} webhook endpoints, the most a tenant may have "
                               f"(PIXELMILL_WEBHOOK_MAX_ENDPOINTS={limit}); delete one you no longer need, "
                               "or use one endpoint with an event filter")
    return created, secret


def fetch_endpoint(store: WebhookStore, *, tenant: str, endpoint_id: str) -> Endpoint:
    """An endpoint of this tenant; another tenant's is simply not found."""
    endpoint = store.fetch_endpoint(endpoint_id)
    if endpoint is None or endpoint.tenant != tenant:
        raise WebhookNotFound(f"no webhook endpoint with id {endpoint_id!r}")
    return endpoint


def rotate_secret(store: WebhookStore, settings: Settings, *, tenant: str, endpoint_id: str,
                  overlap_s: int | None = None) -> tuple[Endpoint, str]:
    """A new secret; the old one keeps signing (beside the new) until the overlap ends."""
    fetch_endpoint(store, tenant=tenant, endpoint_id=endpoint_id)
    overlap = settings.webhook_secret_overlap_s if overlap_s is None else max(0, min(overlap_s, MAX_OVERLAP_S))
    secret = new_secret()
    now = time.time()

    def change(endpoint: Endpoint) -> None:
        for old in endpoint.secrets:
            if old.expires_at is None or old.expires_at > now + overlap:
                old.expires_at = now + overlap
        endpoint.secrets = [Secret(value=secret, created_at=now)] + [s for s in endpoint.secrets if s.is_live(now)]

    endpoint = _update(store, endpoint_id, change)
    return endpoint, secret


def enable_endpoint(store: WebhookStore, *, tenant: str, endpoint_id: str) -> Endpoint:
    fetch_endpoint(store, tenant=tenant, endpoint_id=endpoint_id)

    def change(endpoint: Endpoint) -> None:
        endpoint.disabled, endpoint.disabled_reason = False, None

    return _update(store, endpoint_id, change)


def disable_endpoint(store: WebhookStore, endpoint_id: str, *, reason: str) -> Endpoint | None:
    def change(endpoint: Endpoint) -> None:
        endpoint.disabled, endpoint.disabled_reason = True, reason

    return store.update_endpoint(endpoint_id, change)


def delete_endpoint(store: WebhookStore, *, tenant: str, endpoint_id: str) -> Endpoint:
    endpoint = fetch_endpoint(store, tenant=tenant, endpoint_id=endpoint_id)
    store.delete_endpoint(endpoint)
    return endpoint


def subscribe(store: WebhookStore, settings: Settings, *, tenant: str, request: SubscriptionRequest) -> Subscribed:
    """The endpoint a job's or batch's ``webhook_url`` names: the tenant's live endpoint for that
    exact URL if there is one (same secret as before), else a new one whose secret is returned once."""
    url = check_webhook_url(request.url, settings)
    endpoint = store.endpoint_for_url(tenant, url)
    secret = None
    if endpoint is None or endpoint.disabled:
        secret = new_secret()
        endpoint = store.create_endpoint(Endpoint.create(tenant=tenant, url=url, events=list(request.events),
                                                         secret=secret, standing=False,
                                                         description="created by a job's webhook_url"))
    return Subscribed(endpoint=endpoint, subscription=Subscription(endpoint.id, tuple(request.events)), secret=secret)


def abandon(store: WebhookStore, subscribed: Subscribed) -> None:
    """Undo ``subscribe`` when the submission it belonged to failed: a secret nobody saw is useless."""
    if subscribed.secret is not None:
        store.delete_endpoint(subscribed.endpoint)


def fetch_delivery(store: WebhookStore, *, tenant: str, delivery_id: str) -> Delivery:
    delivery = store.fetch_delivery(delivery_id)
    if delivery is None or delivery.tenant != tenant:
        raise WebhookNotFound(f"no delivery with id {delivery_id!r}")
    return delivery


def redeliver(store: WebhookStore, *, tenant: str, delivery_id: str,
              enqueue: Callable[[str, int], None]) -> Delivery:
    """Send a dead (or delivered) delivery again: a fresh round of attempts, the same webhook-id."""
    delivery = fetch_delivery(store, tenant=tenant, delivery_id=delivery_id)
    if delivery.status == "pending":
        raise DeliveryConflict(f"delivery {delivery_id} is already pending; its next attempt is on its way")
    endpoint = store.fetch_endpoint(delivery.endpoint_id)
    if endpoint is None:
        raise DeliveryConflict(f"the endpoint of delivery {delivery_id} was deleted; nothing to send it to")
    if endpoint.disabled:
        raise DeliveryConflict(f"endpoint {endpoint.id} is disabled ({endpoint.disabled_reason}); "
                               f"enable it first: POST /api/v1/webhooks/{endpoint.id}/enable")

    def change(d: Delivery) -> None:
        if d.status == "pending":
            raise DeliveryConflict(f"delivery {delivery_id} is already pending; its next attempt is on its way")
        d.status, d.tries, d.next_attempt_at, d.dead_at = "pending", 0, time.time(), None
        d.schedule += 1

    updated = store.update_delivery(delivery_id, change)
    if updated is None:
        raise WebhookNotFound(f"no delivery with id {delivery_id!r}")
    enqueue(updated.id, updated.schedule)
    return updated


def _update(store: WebhookStore, endpoint_id: str, change: Callable[[Endpoint], None]) -> Endpoint:
    endpoint = store.update_endpoint(endpoint_id, change)
    if endpoint is None:
        raise WebhookNotFound(f"no webhook endpoint with id {endpoint_id!r}")
    return endpoint
