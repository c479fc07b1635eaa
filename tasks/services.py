"""The services every process uses: Redis clients, the job store, blobs, tenants, webhooks and
the latent cache (its Redis side), built lazily once per process. Free of torch: the web app,
the io worker, the reaper and the CLI run on this alone; workers add tasks.worker_runtime."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property, lru_cache

import redis

from cache.backend import Backend, build_client
from cache.latents import LatentStore
from cache.service import CacheConfig, LatentCache
from safety.policy import Action, AuditPolicy
from safety.quality_policy import QualityAction, QualityPolicy
from tasks.blobs import BlobStore
from tasks.settings import Settings, get_settings
from tasks.store import JobStore
from tasks.tenants import TenantStore
from tasks.webhooks.store import WebhookStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, health_check_interval=30,
                                    socket_connect_timeout=5, socket_timeout=30)

    @cached_property
    def broker_redis(self) -> redis.Redis | None:
        """The Redis broker (the store's client when they share a URL); None for another broker."""
        url = self.settings.broker()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return None
        if url == self.settings.redis_url:
            return self.redis
        return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)

    @cached_property
    def store(self) -> JobStore:
        return JobStore(self.redis, ttl_s=self.settings.job_ttl_s, on_events=self._announce,
                        sla_target_s=self.settings.sla_target_s)

    @cached_property
    def webhooks(self) -> WebhookStore:
        return WebhookStore(self.redis, ttl_s=self.settings.job_ttl_s)

    def _announce(self, events: list) -> None:
        """Job events are already in the outbox (same transaction as the change); wake the io queue."""
        from tasks.webhooks.tasks import kick

        kick(self.settings)

    @cached_property
    def tenants(self) -> TenantStore:
        return TenantStore(self.redis)

    @cached_property
    def blobs(self) -> BlobStore:
        # Indexed in the job store's Redis: the reaper deletes a blob once no job needs it (tasks.blobs)
        return BlobStore(self.settings.blob_dir, index=self.redis, keep_s=self.settings.job_ttl_s)

    @cached_property
    def cache_backend(self) -> Backend:
        """The latent cache's Redis (cache_redis_url, else redis_url), with short timeouts."""
        return Backend(build_client(self.settings.cache_redis()))

    @cached_property
    def cache(self) -> LatentCache:
        s = self.settings
        return LatentCache(self.cache_backend, config=CacheConfig(
            latent_ttl_s=s.latent_ttl_s, result_ttl_s=s.result_ttl_s, hot_bytes=s.cache_hot_bytes,
            max_entry_bytes=s.cache_max_entry_bytes, hash_radius=s.cache_hash_radius,
            singleflight_timeout_s=s.singleflight_timeout_s))

    @property
    def latents(self) -> LatentStore:
        return self.cache.latents

    def audit_policy(self, tenant: str) -> AuditPolicy:
        default = AuditPolicy(threshold=self.settings.audit_threshold, action=Action(self.settings.audit_action))
        return self.tenants.policy(tenant, default=default)

    def quality_policy(self, tenant: str) -> QualityPolicy | None:
        """The tenant's quality policy, else the default of the quality_* settings (None: no policy)."""
        s = self.settings
        default = QualityPolicy(metric=s.quality_metric, threshold=s.quality_threshold,
                                action=QualityAction(s.quality_action),
                                max_retries=s.quality_max_retries) if s.quality_metric else None
        return self.tenants.quality_policy(tenant, default=default)


@lru_cache(maxsize=1)
def get_services() -> Services:
    return Services(get_settings())
