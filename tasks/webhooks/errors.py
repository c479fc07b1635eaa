"""Errors of the webhook layer; each maps to the API's {"error": {"code", "message"}} shape."""

from __future__ import annotations

from tasks.errors import PixelmillError


class WebhookNotFound(PixelmillError):
    code = "not_found"
    status = 404


class WebhookUrlRefused(PixelmillError):
    """The webhook URL failed the outbound guard (SSRF) or is malformed."""

    code = "webhook_url_refused"
    status = 422


class TooManyEndpoints(PixelmillError):
    """The tenant has as many standing endpoints as PIXELMILL_WEBHOOK_MAX_ENDPOINTS allows."""

    code = "too_many_webhooks"
    status = 422


class InvalidWebhook(PixelmillError):
    code = "invalid_webhook"
    status = 422


class DeliveryConflict(PixelmillError):
    code = "conflict"
    status = 409
