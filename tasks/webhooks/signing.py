"""Standard Webhooks signing: ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")),
where the key is the base64-decoded part of a ``whsec_…`` secret. During a rotation every
live secret signs and the signatures go space-separated in one header."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
USER_AGENT = "pixelmill-webhooks/1"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with 'whsec_'")
    return base64.b64decode(secret[len(SECRET_PREFIX):])


def sign(secret: str, *, msg_id: str, timestamp: int, body: str) -> str:
    digest = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: Sequence[str], *, msg_id: str, timestamp: int, body: str) -> str:
    if not secrets_:
        raise ValueError("an endpoint needs at least one live secret to sign with")
    return " ".join(sign(s, msg_id=msg_id, timestamp=timestamp, body=body) for s in secrets_)


def headers(secrets_: Sequence[str], *, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """Every header a delivery attempt carries."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_, msg_id=msg_id, timestamp=timestamp, body=body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
