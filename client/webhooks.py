"""Standard Webhooks on the receiving side: verify a delivery, and (for ``pixelmill webhooks listen``)
sign one. Built on the ``standardwebhooks`` package, so a receiver checks pixelmill's signatures
with the reference implementation rather than with pixelmill's own code."""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks import WebhookVerificationError as _PackageError

SECRET_PREFIX = "whsec_"
USER_AGENT = "pixelmill-webhooks-listen/1"


class WebhookVerificationError(Exception):
    """The delivery is not from the holder of the secret, or too old or too new (±5 minutes):
    answer 400 and do not act on it."""


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """The event (``{"type", "timestamp", "data"}``) once ``webhook-signature`` matches ``body`` under
    ``secret`` (``whsec_…``) and ``webhook-timestamp`` is within 5 minutes of now.

    ``body`` must be the raw bytes as received (``request.get_data()`` in Flask), not re-serialised
    JSON. Deduplicate on ``headers["webhook-id"]``: a retry or a redelivery carries the same one.
    Raises ``WebhookVerificationError``.
    """
    if not secret:
        raise WebhookVerificationError("no webhook secret is configured: set the endpoint's whsec_… secret")
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        return Webhook(secret).verify(body, lowered)
    except _PackageError as e:
        raise WebhookVerificationError(str(e)) from e
    except (ValueError, binascii.Error) as e:  # a malformed signature header or secret
        raise WebhookVerificationError(f"malformed webhook headers or secret: {e}") from e


def new_secret() -> str:
    """A fresh signing secret, as the server makes them: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign_webhook(body: str, *, secret: str, msg_id: str, timestamp: float | None = None) -> dict[str, str]:
    """The headers of a delivery of ``body`` signed with ``secret``, as the server sends them."""
    at = datetime.fromtimestamp(int(time.time() if timestamp is None else timestamp), tz=timezone.utc)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
