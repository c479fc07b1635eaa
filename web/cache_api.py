"""The latent cache over HTTP: its counters and the current tenant's entries (GET), and a way
for a tenant to clear its entries (DELETE). A cache that is down answers, it does not fail."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint
from pydantic import Field

from cache.policy import check_memory_policy
from cache.scopes import scope_for
from cache.stats import prometheus_text
from tasks.errors import PixelmillError
from tasks.present import View
from tasks.services import Services
from web.extensions import current_tenant, pixelmill
from web.openapi import Json, operation

bp = Blueprint("cache_api", __name__, url_prefix="/api/v1/cache")


class SharedCache(PixelmillError):
    code = "cache_shared"
    status = 409


class CacheUnavailable(PixelmillError):
    code = "cache_unavailable"
    status = 503


class CacheScope(View):
    mode: str = Field(description="PIXELMILL_CACHE_SCOPE: tenant or shared")
    name: Literal["tenant", "shared"]


class CacheEntries(View):
    latent: int | None = Field(description="null when the cache's Redis did not answer")
    result: int | None
    prompt: int | None = Field(description="prompt embeddings (text-encoder outputs)")
    control: int | None = Field(description="control maps (canny, tile, depth) by the input's pixels")


class MemoryPolicy(View):
    policy: str | None = Field(description="the cache Redis' maxmemory-policy; null when it cannot be read")
    maxmemory: int | None
    shared_with_broker: bool
    ok: bool
    problems: list[str]


class CacheLimits(View):
    latent_ttl_s: int
    result_ttl_s: int
    max_entry_bytes: int
    hot_bytes_per_worker_process: int
    hash_radius: int
    singleflight_timeout_s: float


class CacheStats(View):
    """Hits, misses and bytes per tier and per stage (see docs/cache.md); the prompt-embedding cache
    counts under the stage ``prompt`` and control maps under ``control``."""

    tiers: dict[str, dict[str, float | int | None]]
    stages: dict[str, dict[str, Any]]
    available: bool


class Cache(View):
    """The latent cache as your tenant sees it: entries, counters, memory policy, limits."""

    scope: CacheScope
    available: bool
    entries: CacheEntries
    stats: CacheStats
    memory_policy: MemoryPolicy
    limits: CacheLimits


class CacheCleared(View):
    """Your scope's entries are gone: a new generation, so no worker serves an old one again."""

    cleared: Literal[True]
    deleted_keys: int


@bp.get("")
@operation("showCache", "cache", "The latent cache: your entries, counters, policy", ok=(200, Json(Cache)))
def show_cache():
    rt = pixelmill.services
    scope = scope_for(tenant=current_tenant(), mode=rt.settings.cache_scope)
    cache = rt.cache
    return Cache(
        scope=CacheScope(mode=rt.settings.cache_scope, name="shared" if scope.is_shared else "tenant"),
        available=cache.backend.is_available() and cache.generation(scope) is not None,
        entries=cache.entries(scope),
        stats=cache.stats.snapshot(scope.token),
        memory_policy=check_memory_policy(cache.backend, shared_with_broker=_shares_the_broker(rt)).to_dict(),
        limits=_limits(rt),
    )


@bp.delete("")
@operation("clearCache", "cache", "Clear your cache entries", ok=(200, Json(CacheCleared)),
           errors={409: "the cache is shared between tenants: one tenant cannot clear it (cache_shared)",
                   503: "the cache's Redis is unavailable (cache_unavailable)"})
def clear_cache():
    rt = pixelmill.services
    scope = scope_for(tenant=current_tenant(), mode=rt.settings.cache_scope)
    if scope.is_shared:
        raise SharedCache("the cache is shared between tenants (PIXELMILL_CACHE_SCOPE=shared): one tenant "
                          "cannot clear it; an operator can, or switch to per-tenant scopes")
    deleted = rt.cache.clear(scope)
    if deleted is None:
        raise CacheUnavailable("the latent cache's Redis is unavailable right now; try again in a minute")
    return CacheCleared(cleared=True, deleted_keys=deleted)


def cache_metrics(rt: Services) -> str:
    """All scopes' cache counters in Prometheus' text format, for the /metrics endpoint."""
    return prometheus_text(rt.cache.stats.snapshot())


def _shares_the_broker(rt: Services) -> bool:
    return rt.settings.cache_redis() == rt.settings.broker()


def _limits(rt: Services) -> CacheLimits:
    s = rt.settings
    return CacheLimits(latent_ttl_s=s.latent_ttl_s, result_ttl_s=s.result_ttl_s,
                       max_entry_bytes=s.cache_max_entry_bytes, hot_bytes_per_worker_process=s.cache_hot_bytes,
                       hash_radius=s.cache_hash_radius, singleflight_timeout_s=s.singleflight_timeout_s)
