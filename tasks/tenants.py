"""Tenants: API keys (stored hashed, shown once, revocable, admin or not, optionally expiring),
per-tenant audit policy, submission rate limits and a cap on unfinished jobs.

Only an admin key (or the operator's CLI) creates keys. A key made by another key records its
creator, never outlives it (its expiry is capped at the creator's) and dies with it: resolving a
key checks its creator too, so revoking an admin key ends every key it made."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field

import redis

from safety.policy import Action, AuditPolicy
from safety.quality_policy import QualityPolicy
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


class KeyForbidden(PixelmillError):
    code = "forbidden"
    status = 403


MAX_CREATOR_CHAIN = 16  # keys made by keys made by keys…: deeper than this is refused, not walked


@dataclass
class ApiKey:
    id: str
    tenant: str
    name: str = ""
    created_at: float = field(default_factory=time.time)
    revoked_at: float | None = None
    admin: bool = False  # may create (and revoke) the tenant's keys
    expires_at: float | None = None  # refused from then on; None: never
    created_by: str | None = None  # the id of the key that made it (None: the CLI); it dies with that key

    def is_expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


def require_admin(key: ApiKey, *, tenant: str) -> None:
    """Creating keys takes an admin key of that tenant."""
    if not key.admin or key.tenant != tenant:
        raise KeyForbidden("only an admin key can create keys: use one, or ask an operator to run "
                           f"`pixelmill keys create --tenant {key.tenant}` (add --admin for a key that may create keys)")


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class TenantStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    # --- API keys --------------------------------------------------------------------------
    def create_key(self, *, tenant: str, name: str = "", admin: bool = False, expires_at: float | None = None,
                   creator: ApiKey | None = None) -> tuple[ApiKey, str]:
        """A new key for ``tenant``; the plaintext is returned once and only its hash is kept.

        ``creator`` is the key asking (None: the operator's CLI): it must be an admin key of the
        same tenant, and the new key expires no later than it."""
        if creator is not None:
            require_admin(creator, tenant=tenant)
            if creator.expires_at is not None:
                expires_at = min(expires_at or creator.expires_at, creator.expires_at)
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id=secrets.token_hex(8), tenant=tenant, name=name, admin=admin, expires_at=expires_at,
                     created_by=creator.id if creator else None)
        with self.redis.pipeline() as pipe:
            pipe.set(store_key("apikey", hash_key(plaintext)), json.dumps(asdict(key)))
            pipe.hset(store_key("tenant", tenant, "keys"), key.id, hash_key(plaintext))
            pipe.execute()
        return key, plaintext

    def resolve(self, plaintext: str) -> ApiKey | None:
        """The key with this plaintext, if it may be used now (not revoked, not expired, nor its creator)."""
        raw = self.redis.get(store_key("apikey", hash_key(plaintext)))
        if raw is None:
            return None
        key = ApiKey(**json.loads(raw))
        return key if self.is_usable(key) else None

    def resolve_id(self, *, tenant: str, key_id: str) -> ApiKey | None:
        """The same for a key known by id (a login session holds the id, never the key)."""
        key = self.fetch_key(tenant=tenant, key_id=key_id)
        return key if key is not None and self.is_usable(key) else None

    def fetch_key(self, *, tenant: str, key_id: str) -> ApiKey | None:
        digest = self.redis.hget(store_key("tenant", tenant, "keys"), key_id)
        raw = self.redis.get(store_key("apikey", digest.decode())) if digest is not None else None
        return ApiKey(**json.loads(raw)) if raw is not None else None

    def is_usable(self, key: ApiKey) -> bool:
        """Not revoked, not expired, and neither is the key that created it (nor that one's creator …)."""
        now = time.time()
        for _ in range(MAX_CREATOR_CHAIN):
            if key.revoked_at or key.is_expired(now):
                return False
            if key.created_by is None:
                return True
            creator = self.fetch_key(tenant=key.tenant, key_id=key.created_by)
            if creator is None:
                return False
            key = creator
        return False

    def list_keys(self, tenant: str) -> list[ApiKey]:
        hashes = self.redis.hvals(store_key("tenant", tenant, "keys"))
        raws = self.redis.mget([store_key("apikey", h.decode()) for h in hashes]) if hashes else []
        return sorted((ApiKey(**json.loads(r)) for r in raws if r), key=lambda k: k.created_at)

    def revoke(self, *, tenant: str, key_id: str, by: ApiKey | None = None) -> ApiKey:
        """Revoke a key of ``tenant``: ``by`` (the key asking; None: the CLI or auth off) must be an
        admin key, or the key itself."""
        digest = self.redis.hget(store_key("tenant", tenant, "keys"), key_id)
        if digest is None:
            raise KeyNotFound(f"no API key with id {key_id!r}")
        if by is not None and not by.admin and by.id != key_id:
            raise KeyForbidden("a key that is not an admin key can revoke only itself; use an admin key")
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

    # --- quality policy (safety.quality_policy) -----------------------------------------------
    def quality_policy(self, tenant: str, *, default: QualityPolicy | None) -> QualityPolicy | None:
        """The tenant's quality policy; ``default`` when it has none, None when it was turned off."""
        raw = self.redis.get(store_key("tenant", tenant, "quality_policy"))
        if raw is None:
            return default
        data = json.loads(raw)
        return QualityPolicy.from_dict(data) if data else None

    def save_quality_policy(self, tenant: str, policy: QualityPolicy | None) -> None:
        """Set the tenant's quality policy; None turns it off (whatever the default)."""
        self.redis.set(store_key("tenant", tenant, "quality_policy"), json.dumps(policy.to_dict() if policy else {}))

    def clear_quality_policy(self, tenant: str) -> None:
        """Back to the default (the quality_* settings)."""
        self.redis.delete(store_key("tenant", tenant, "quality_policy"))

    def max_priority(self, tenant: str, *, default: str) -> str:
        """The highest priority the admin lets this tenant ask for (tasks.priority.LEVELS)."""
        raw = self.redis.get(store_key("tenant", tenant, "max_priority"))
        return raw.decode() if raw else default

    def save_max_priority(self, tenant: str, level: str) -> None:
        self.redis.set(store_key("tenant", tenant, "max_priority"), level)

    # --- limits ----------------------------------------------------------------------------
    def check_limits(self, tenant: str, *, per_minute: int, adding: int, limit: int) -> str | None:
        """Count one submission in this minute's window and refuse past ``per_minute``; refuse
        ``adding`` jobs that would take the tenant's unfinished jobs past ``limit``. One round trip,
        which also returns the highest priority the admin set for the tenant (None: the default),
        for the caller to check."""
        window = int(time.time() // 60)
        name = store_key("rate", tenant, str(window))
        with self.redis.pipeline() as pipe:
            pipe.incr(name)
            pipe.expire(name, 120)
            pipe.scard(store_key("active", tenant))
            pipe.get(store_key("tenant", tenant, "max_priority"))
            count, _, active, highest = pipe.execute()
        if count > per_minute:
            retry_after = max(1, 60 - int(time.time() % 60))
            raise RateLimited(f"more than {per_minute} submissions this minute (PIXELMILL_RATE_LIMIT_PER_MINUTE; "
                              f"a batch counts once); retry in {retry_after} s", retry_after=retry_after)
        if active + adding > limit:
            raise RateLimited(
                f"{active} of your jobs are still unfinished and this submission adds {adding} (limit {limit}, "
                "PIXELMILL_MAX_ACTIVE_JOBS); wait for some to finish",
                retry_after=30,
            )
        return highest.decode() if highest else None
