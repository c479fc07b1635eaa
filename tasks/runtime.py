"""What a process needs to run stages: clients and stores, built lazily once per process."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property, lru_cache

import redis

from cache.backend import Backend, build_client
from cache.latents import LatentStore
from cache.policy import check_memory_policy
from cache.service import CacheConfig, LatentCache
from safety.nsfw import get_classifier
from safety.policy import Action, AuditPolicy
from tasks.blobs import BlobStore
from tasks.settings import Settings, get_settings
from tasks.store import JobStore
from tasks.tenants import TenantStore
from tasks.webhooks.store import WebhookStore
from workers import residency

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, health_check_interval=30,
                                    socket_connect_timeout=5, socket_timeout=30)

    @cached_property
    def store(self) -> JobStore:
        return JobStore(self.redis, ttl_s=self.settings.job_ttl_s, on_events=self._announce)

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
        return BlobStore(self.settings.blob_dir)

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

    def diffusion(self) -> residency.LoadedDiffusion:
        return residency.diffusion_engine(
            model=self.settings.diffusion_model,
            revision=self.settings.diffusion_revision,
            device=self.settings.device,
            dtype=self.settings.dtype,
        )

    def audit_policy(self, tenant: str) -> AuditPolicy:
        default = AuditPolicy(threshold=self.settings.audit_threshold, action=Action(self.settings.audit_action))
        return self.tenants.policy(tenant, default=default)

    def warm_up(self) -> None:
        get_classifier()  # every worker may audit: load the classifier before taking work
        report = check_memory_policy(self.cache_backend, shared_with_broker=self.settings.cache_redis() == self.settings.broker())
        for problem in report.problems:
            log.warning("latent cache: %s", problem)
        if self.settings.preload_models and self.settings.diffusion_model:
            loaded = self.diffusion()
            log.info("diffusion model %s resident on %s (%s)", loaded.engine.model, loaded.device, loaded.dtype_name)


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    return Runtime(get_settings())
