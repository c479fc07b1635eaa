"""Our signatures, checked by the `standardwebhooks` package from PyPI (not by our own code)."""

from __future__ import annotations

import base64
import json
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tasks.webhooks.signing import headers, new_secret, sign


def _delivery(secrets, *, body: str = '{"type":"job.completed","data":{"id":"abc"}}', ts: int | None = None):
    return body, headers(secrets, msg_id="msg_123", timestamp=int(time.time()) if ts is None else ts, body=body)


def test_secret_shape():
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert new_secret() != secret


def test_a_delivery_verifies_with_standardwebhooks():
    secret = new_secret()
    body, sent = _delivery([secret])
    assert set(sent) >= {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert Webhook(secret).verify(body, sent) == json.loads(body)


def test_the_signature_matches_the_reference_implementation():
    secret = new_secret()
    ts = int(time.time())
    from datetime import datetime, timezone

    expected = Webhook(secret).sign("msg_123", datetime.fromtimestamp(ts, tz=timezone.utc), "{}")
    assert sign(secret, msg_id="msg_123", timestamp=ts, body="{}") == expected


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "secret"])
def test_tampering_fails_verification(tamper):
    secret = new_secret()
    body, sent = _delivery([secret])
    if tamper == "body":
        body = body.replace("abc", "abd")
    elif tamper == "id":
        sent["webhook-id"] = "msg_124"
    elif tamper == "timestamp":
        sent["webhook-timestamp"] = str(int(sent["webhook-timestamp"]) - 1)
    else:
        secret = new_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, sent)


def test_an_old_timestamp_is_rejected_by_receivers():
    secret = new_secret()
    body, sent = _delivery([secret], ts=int(time.time()) - 600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(body, sent)


def test_during_a_rotation_both_secrets_verify():
    old, new = new_secret(), new_secret()
    body, sent = _delivery([new, old])
    signatures = sent["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert Webhook(new).verify(body, sent)
    assert Webhook(old).verify(body, sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, sent)


def test_rotation_on_an_endpoint_keeps_the_old_secret_until_the_overlap_ends():
    from tasks.webhooks.models import Endpoint, Secret

    now = time.time()
    endpoint = Endpoint.create(tenant="t", url="https://example.com/", events=["job.completed"], secret="whsec_b2xk")
    endpoint.secrets[0].expires_at = now + 60
    endpoint.secrets.insert(0, Secret(value="whsec_bmV3", created_at=now))
    assert endpoint.live_secrets(now) == ["whsec_bmV3", "whsec_b2xk"]
    assert endpoint.live_secrets(now + 61) == ["whsec_bmV3"]
    assert "whsec_" not in json.dumps(endpoint.public(now=now))  # the API never shows a secret again
