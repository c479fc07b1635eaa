"""Who may hit whose entries. Per tenant by default — a shared hit would leak that someone else
uploaded the same picture; one shared scope only when the setting says so."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from cache.backend import PREFIX, Backend
from cache.errors import CacheConfigError

SHARED = "shared"


@dataclass(frozen=True)
class Scope:
    name: str    # "tenant:<id>" or "shared"
    token: str   # what Redis keys carry: a hash of the name (tenant ids may hold any character)

    @property
    def is_shared(self) -> bool:
        return self.name == SHARED


def scope_for(*, tenant: str, mode: str) -> Scope:
    """The scope a tenant's lookups run in under ``mode`` (the ``cache_scope`` setting)."""
    if mode == "shared":
        return Scope(name=SHARED, token=SHARED)
    if mode != "tenant":
        raise CacheConfigError(f"cache_scope must be 'tenant' or 'shared', got {mode!r} (PIXELMILL_CACHE_SCOPE)")
    name = f"tenant:{tenant}"
    return Scope(name=name, token="t" + hashlib.sha256(name.encode()).hexdigest()[:20])


def scope_pattern(scope: Scope) -> str:
    return f"{PREFIX}:{scope.token}:*"


def count_entries(backend: Backend, scope: Scope, *, kind: str) -> int | None:
    """How many entries of ``kind`` (latent, result, fp) the scope holds; None when Redis is down."""

    def count(r: redis.Redis) -> int:
        return sum(1 for _ in r.scan_iter(match=f"{PREFIX}:{scope.token}:{kind}:*", count=1000))

    return backend.call("count", count, None)


def clear_scope(backend: Backend, scope: Scope) -> int | None:
    """Delete every cache entry of ``scope`` (latents, fingerprints, index, results, locks).

    Returns how many keys went, or None when Redis is down.
    """

    def clear(r: redis.Redis) -> int:
        deleted, batch = 0, []
        for key in r.scan_iter(match=scope_pattern(scope), count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += r.unlink(*batch)
                batch = []
        if batch:
            deleted += r.unlink(*batch)
        return deleted

    return backend.call("clear", clear, None)
