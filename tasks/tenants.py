"""Tenants: API keys (stored hashed, shown once, revocable), per-tenant audit policy,
submission rate limits and a cap on unfinished jobs."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field

import redis

from safety.policy import Action, AuditPolicy
from tasks.errors import PixelmillError
from tasks.store import store_key

KEY_PREFIX = "pm_"


class RateLimited(PixelmillError):
    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KeyNotFound(PixelmillError):
    code = "not_found"
    status = 404


@dataclass
class ApiKey:
    id: str
    tenant: str
    name: str = ""
    created_at: float = field(default_factory=time.time)
    revoked_at: float | None = None


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class TenantStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    # --- API keys --------------------------------------------------------------------------
    def create_key(self, *, tenant: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key for ``tenant``; the plaintext is returned once and only its hash is kept."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id=secrets.token_hex(8), tenant=tenant, name=name)
        with self.redis.pipeline() as pipe:
            pipe.set(store_key("apikey", hash_key(plaintext)), json.dumps(asdict(key)))
            pipe.hset(store_key("tenant", tenant, "keys"), key.id, hash_key(plaintext))
            pipe.execute()
        return key, plaintext

    def resolve(self, plaintext: str) -> ApiKey | None:
        raw = self.redis.get(store_key("apikey", hash_key(plaintext)))
        if raw is None:
            return None
        key = ApiKey(**json.loads(raw))
        return None if key.revoked_at else key

    def list_keys(self, tenant: str) -> list[ApiKey]:
        hashes = self.redis.hvals(store_key("tenant", tenant, "keys"))
        raws = self.redis.mget([store_key("apikey", h.decode()) for h in hashes]) if hashes else []
        return sorted((ApiKey(**json.loads(r)) for r in raws if r), key=lambda k: k.created_at)

    def revoke(self, *, tenant: str, key_id: str) -> ApiKey:
        digest = self.redis.hget(store_key("tenant", tenant, "keys"), key_id)
        if digest is None:
            raise KeyNotFound(f"no API key with id {key_id!r}")
        name = store_key("apikey", digest.decode())
        key = ApiKey(**json.loads(self.redis.get(name)))
        key.revoked_at = key.revoked_at or time.time()
        self.redis.set(name, json.dumps(asdict(key)))
        return key

    # --- audit policy ----------------------------------------------------------------------
    def policy(self, tenant: str, *, default: AuditPolicy) -> AuditPolicy:
        raw = self.redis.get(store_key("tenant", tenant, "policy"))
        if raw is None:
            return default
        data = json.loads(raw)
        return AuditPolicy(threshold=data["threshold"], action=Action(data["action"]))

    def save_policy(self, tenant: str, policy: AuditPolicy) -> None:
        self.redis.set(store_key("tenant", tenant, "policy"),
                       json.dumps({"threshold": policy.threshold, "action": policy.action.value}))

    # --- limits ----------------------------------------------------------------------------
    def check_limits(self, tenant: str, *, per_minute: int, adding: int, limit: int) -> None:
        """Count one submission in this minute's window and refuse past ``per_minute``; refuse
        ``adding`` jobs that would take the tenant's unfinished jobs past ``limit``. One round trip."""
        window = int(time.time() // 60)
        name = store_key("rate", tenant, str(window))
        with self.redis.pipeline() as pipe:
            pipe.incr(name)
            pipe.expire(name, 120)
            pipe.scard(store_key("active", tenant))
            count, _, active = pipe.execute()
        if count > per_minute:
            retry_after = max(1, 60 - int(time.time() % 60))
            raise RateLimited(f"more than {per_minute} submissions this minute; retry in {retry_after} s",
                              retry_after=retry_after)
        if active + adding > limit:
            raise RateLimited(
                f"{active} of your jobs are still unfinished (limit {limit}); wait for some to finish",
                retry_after=30,
            )
