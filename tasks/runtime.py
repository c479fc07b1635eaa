"""What a process needs to run stages: clients and stores, built lazily once per process."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import redis

from cache.backend import Backend, build_client
from cache.latents import LatentStore
from cache.policy import check_memory_policy
from cache.service import CacheConfig, LatentCache
from safety.nsfw import get_classifier
from safety.policy import Action, AuditPolicy
from tasks.batching import GenerateBatcher
from tasks.blobs import BlobStore
from tasks.jobs import JobParams
from tasks.settings import Settings, get_settings
from tasks.store import JobStore
from tasks.tenants import TenantStore
from tasks.webhooks.store import WebhookStore
from workers import residency
from workers.diffusion import EngineOptions

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    _batcher: GenerateBatcher | None = field(default=None, init=False, repr=False)

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
        s = self.settings
        return residency.diffusion_engine(
            model=s.diffusion_model,
            revision=s.diffusion_revision,
            device=s.device,
            dtype=s.dtype,
            options=EngineOptions(attention=s.attention, channels_last=s.channels_last,
                                  torch_compile=s.torch_compile, vae_slicing=s.vae_slicing),
        )

    def loaded_diffusion(self) -> residency.LoadedDiffusion | None:
        """The resident diffusion model, if this process has loaded it (never loads)."""
        return self.diffusion() if residency.is_loaded() else None

    def generate_batcher(self) -> GenerateBatcher | None:
        """The process's dynamic batcher of generate calls, when this process batches (a threads
        pool on the gpu queue with gpu_max_batch > 1); None runs each generate alone."""
        return self._batcher

    def loaded_batcher(self) -> GenerateBatcher | None:
        return self._batcher

    def audit_policy(self, tenant: str) -> AuditPolicy:
        default = AuditPolicy(threshold=self.settings.audit_threshold, action=Action(self.settings.audit_action))
        return self.tenants.policy(tenant, default=default)

    def warm_up(self, *, batching: bool = False) -> None:
        """Before the process takes work: the classifier, the diffusion model (when preloading),
        one small generation through it, and the batcher when this process batches."""
        get_classifier()  # every worker may audit: load the classifier before taking work
        report = check_memory_policy(self.cache_backend, shared_with_broker=self.settings.cache_redis() == self.settings.broker())
        for problem in report.problems:
            log.warning("latent cache: %s", problem)
        if self.settings.preload_models and self.settings.diffusion_model:
            loaded = self.diffusion()
            # torch.compile specialises on shapes: warm a compiled UNet up at the working size (the
            # default, square), so the first real request does not pay for the compile.
            size = JobParams.model_fields["size"].default if self.settings.torch_compile else 64
            loaded.engine.warm_up(size=size)
            log.info("diffusion model %s resident on %s (%s), warmed up", loaded.engine.model, loaded.device,
                     loaded.dtype_name)
        if batching and self.settings.gpu_max_batch > 1 and self._batcher is None:
            self._batcher = GenerateBatcher(self.diffusion, max_batch=self.settings.gpu_max_batch,
                                            max_wait_s=self.settings.gpu_max_wait_ms / 1000)
            log.info("batching generate: up to %d per call, waiting at most %d ms", self.settings.gpu_max_batch,
                     self.settings.gpu_max_wait_ms)


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    return Runtime(get_settings())
