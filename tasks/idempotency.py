"""Idempotent submits: a client sends an ``Idempotency-Key`` with POST /api/v1/jobs or /batches,
and a retry with the same key within 24 h answers the job or batch the first request created
instead of making a second one (a timeout, a dropped connection, a rerun of `pixelmill submit`).

The key is scoped to the tenant and the route. What it guards is a fingerprint of the request
(its form fields and each file's name and SHA-256): the same key with a different request is a
client bug and answers 422. While the first request is still being served, a retry answers 409
(try again in a second). A first request that fails (a 4xx) frees the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import redis

from tasks.errors import PixelmillError
from tasks.store import store_key

TTL_S = 24 * 3600
PENDING_TTL_S = 300  # a claim whose request died half-way frees itself
MAX_KEY_LENGTH = 255


class IdempotencyKeyReused(PixelmillError):
    code = "idempotency_key_reused"
    status = 422


class IdempotencyKeyInUse(PixelmillError):
    code = "idempotency_key_in_use"
    status = 409
    retry_after = 1


class BadIdempotencyKey(PixelmillError):
    code = "bad_idempotency_key"
    status = 400


def fingerprint(*, fields: dict[str, list[str]], files: list[tuple[str, bytes]]) -> str:
    """What a request asks for, independent of field order and multipart boundaries."""
    canonical = {"fields": {name: sorted(values) for name, values in sorted(fields.items())},
                 "files": [[name, hashlib.sha256(data).hexdigest()] for name, data in files]}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """A request's hold on its key: ``created`` is the id it already made (a replay), else None."""

    redis_key: str
    fingerprint: str
    created: str | None


class IdempotencyStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def claim(self, *, tenant: str, route: str, key: str, fingerprint: str) -> Claim:
        key = key.strip()
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise BadIdempotencyKey(f"Idempotency-Key must be 1–{MAX_KEY_LENGTH} printable characters "
                                    "(a UUID per logical request is a good choice)")
        redis_key = store_key("idempotency", tenant, route, hashlib.sha256(key.encode()).hexdigest())
        mine = json.dumps({"fingerprint": fingerprint, "created": None})
        if self.redis.set(redis_key, mine, nx=True, ex=PENDING_TTL_S):
            return Claim(redis_key, fingerprint, None)
        raw = self.redis.get(redis_key)
        if raw is None:  # freed a moment ago: claim it again
            return self.claim(tenant=tenant, route=route, key=key, fingerprint=fingerprint)
        held = json.loads(raw)
        if held["fingerprint"] != fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used in the last 24 h for a different request; "
                                       "send a new key for a new request")
        if held["created"] is None:
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still being served; "
                                      "retry in a second to get its answer")
        return Claim(redis_key, fingerprint, held["created"])

    def complete(self, claim: Claim, created: str) -> None:
        self.redis.set(claim.redis_key, json.dumps({"fingerprint": claim.fingerprint, "created": created}), ex=TTL_S)

    def release(self, claim: Claim) -> None:
        self.redis.delete(claim.redis_key)
