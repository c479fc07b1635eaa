"""The latent cache over HTTP: its counters and the current tenant's entries (GET), and a way
for a tenant to clear its entries (DELETE). A cache that is down answers, it does not fail."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from cache.policy import check_memory_policy
from cache.scopes import scope_for
from cache.stats import prometheus_text
from tasks.errors import PixelmillError
from tasks.services import Services
from web.extensions import current_tenant, pixelmill

bp = Blueprint("cache_api", __name__, url_prefix="/api/v1/cache")


class SharedCache(PixelmillError):
    code = "cache_shared"
    status = 409


class CacheUnavailable(PixelmillError):
    code = "cache_unavailable"
    status = 503


@bp.get("")
def show_cache():
    rt = pixelmill.services
    scope = scope_for(tenant=current_tenant(), mode=rt.settings.cache_scope)
    cache = rt.cache
    return jsonify(
        scope={"mode": rt.settings.cache_scope, "name": "shared" if scope.is_shared else "tenant"},
        available=cache.backend.is_available() and cache.generation(scope) is not None,
        entries=cache.entries(scope),
        stats=cache.stats.snapshot(scope.token),
        memory_policy=check_memory_policy(cache.backend, shared_with_broker=_shares_the_broker(rt)).to_dict(),
        limits=_limits(rt),
    )


@bp.delete("")
def clear_cache():
    rt = pixelmill.services
    scope = scope_for(tenant=current_tenant(), mode=rt.settings.cache_scope)
    if scope.is_shared:
        raise SharedCache("the cache is shared between tenants (PIXELMILL_CACHE_SCOPE=shared): one tenant "
                          "cannot clear it; an operator can, or switch to per-tenant scopes")
    deleted = rt.cache.clear(scope)
    if deleted is None:
        raise CacheUnavailable("the latent cache's Redis is unavailable right now; try again in a minute")
    return jsonify(cleared=True, deleted_keys=deleted)


def cache_metrics(rt: Services) -> str:
    """All scopes' cache counters in Prometheus' text format, for the /metrics endpoint."""
    return prometheus_text(rt.cache.stats.snapshot())


def _shares_the_broker(rt: Services) -> bool:
    return rt.settings.cache_redis() == rt.settings.broker()


def _limits(rt: Services) -> dict[str, Any]:
    s = rt.settings
    return {"latent_ttl_s": s.latent_ttl_s, "result_ttl_s": s.result_ttl_s, "max_entry_bytes": s.cache_max_entry_bytes,
            "hot_bytes_per_worker_process": s.cache_hot_bytes, "hash_radius": s.cache_hash_radius,
            "singleflight_timeout_s": s.singleflight_timeout_s}
