"""All of pixelmill's settings in one place: defaults → file → environment → overrides.

Every setting can be given as an environment variable with the prefix ``PIXELMILL_``
(``PIXELMILL_REDIS_URL``, ``PIXELMILL_DIFFUSION_MODEL``, …) or in a ``.env`` file, or in a
JSON file named by ``PIXELMILL_CONFIG``.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

STAGES = ("encode", "generate", "enhance", "audit")
QUEUES = ("cpu", "gpu", "io")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIXELMILL_", env_file=".env", extra="ignore")

    # --- connections -------------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="job store, latent cache and (by default) broker")
    broker_url: str | None = Field(None, description="Celery broker; defaults to redis_url")
    data_dir: Path = Field(Path("var"), description="blobs (uploads, results) and the embedded Redis live here")

    # --- models and devices --------------------------------------------------------------
    diffusion_model: str | None = Field(None, description="hub id or local folder (save_pretrained); unset = diffusion off")
    diffusion_revision: str | None = None
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    dtype: str = Field("auto", description="auto (fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16")
    preload_models: bool = Field(False, description="load (and warm up) the diffusion model when a worker "
                                                    "process starts, before it takes work")
    torch_threads: int | None = Field(None, ge=1, le=256, description="torch intra-op threads per worker "
                                                                     "process; unset: torch's default (all cores). "
                                                                     "Set 1 when several workers share a small CPU")
    attention: Literal["sdpa", "math"] = Field("sdpa", description="sdpa: torch scaled_dot_product_attention "
                                                                 "(flash/memory-efficient kernels); math: plain")
    channels_last: bool = Field(False, description="UNet and VAE in channels_last memory format (GPU convs)")
    torch_compile: bool = Field(False, description="torch.compile the UNet: minutes of compiling at start "
                                                   "(warm-up), then faster steps; each new shape compiles again")
    vae_slicing: Literal["auto", "on", "off"] = Field("auto", description="decode a batch one image at a "
                                                                       "time (less memory); auto: batches of 4+")

    # --- dynamic batching of generate on the gpu queue (docs/batching.md) ---------------------
    gpu_max_batch: int = Field(8, ge=1, le=64, description="generate requests run as one batch, at most; "
                                                           "1 turns batching off")
    gpu_max_wait_ms: int = Field(30, ge=0, le=10_000, description="the longest a request waits for batchmates "
                                                                  "(none when no other request is on its way)")

    # --- routing --------------------------------------------------------------------------
    routes: dict[str, str] = Field(
        default_factory=dict,
        description='overrides of the routing policy, e.g. {"generate:diffusion": "cpu"}',
    )

    @field_validator("routes")
    @classmethod
    def _known_routes(cls, routes: dict[str, str]) -> dict[str, str]:
        """A key names a stage (or notify) and an engine (or *): a typo would be ignored silently."""
        stages, engines = (*STAGES, "notify"), ("style", "diffusion", "*")
        for key, queue in routes.items():
            stage, _, engine = key.partition(":")
            if stage not in stages or engine not in engines:
                raise ValueError(f"route {key!r}: write <stage>:<engine> with a stage of {', '.join(stages)} "
                                 f"and an engine of {', '.join(engines)}")
            if not queue.strip():
                raise ValueError(f"route {key!r} names no queue")
        return routes

    # --- Celery timing (visibility_timeout > hard limit > soft limit) ----------------------
    task_soft_time_limit: int = 1500
    task_time_limit: int = 1800
    visibility_timeout: int = 3600
    cancel_tasks_on_connection_loss: bool = Field(
        True, description="stage workers: cancel running tasks when the broker goes (they are redelivered); "
                          "off for io (threads pool) workers, whose deliveries are idempotent")
    task_events: bool = Field(False, description="workers send Celery task events (each task's received/started/"
                                                 "succeeded); Flower turns them on by itself while it runs")
    unacked_restore_interval_s: int = Field(10, description="Redis broker: how often to look for messages of dead workers")
    max_stage_attempts: int = Field(4, description="deliveries of one stage before the job is failed as poison")
    stage_deadline_s: int = Field(2100, description="a running stage with no heartbeat this long is stuck (reaper)")
    default_job_deadline_s: int | None = Field(None, description="jobs expire this long after submission (None: never)")
    stage_lease_s: int = Field(30, ge=10, description="a running stage whose worker has not renewed its lease this "
                                                      "long is enqueued again (the worker is gone); renewed every 5 s")
    reaper_interval_s: int = Field(10, gt=0, description="seconds between reaper passes")

    # --- limits -------------------------------------------------------------------------
    max_upload_bytes: int = 25 * 1024 * 1024
    max_side: int = 8192
    max_pixels: int = 40_000_000
    max_batch_files: int = 100
    max_request_bytes: int = 200 * 1024 * 1024
    max_output_pixels: int = 64_000_000

    # --- lifetimes ------------------------------------------------------------------------
    job_ttl_s: int = 7 * 24 * 3600
    latent_ttl_s: int = Field(24 * 3600, gt=0, description="latents and their near-duplicate index")
    result_ttl_s: int = Field(24 * 3600, gt=0, description="whole results reused for identical requests")

    # --- latent cache (docs/cache.md) ---------------------------------------------------------
    cache_redis_url: str | None = Field(None, description="a separate Redis for the cache (allkeys-lru); "
                                                          "defaults to redis_url (then every cache key has a TTL)")
    cache_scope: Literal["tenant", "shared"] = Field("tenant", description="tenant: hits only within a tenant; "
                                                                           "shared: across tenants")
    cache_hot_bytes: int = Field(256 * 1024 * 1024, ge=0, description="in-worker LRU of latents (on the GPU "
                                                                      "for GPU workers), per process")
    cache_max_entry_bytes: int = Field(16 * 1024 * 1024, gt=0, description="larger latents are not cached")
    cache_hash_radius: int = Field(6, ge=0, le=15, description="pHash bits a near-duplicate may differ by")
    singleflight_timeout_s: float = Field(180.0, gt=0, description="how long a worker waits for another "
                                                                   "worker's encode of the same image")

    # --- web ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    default_tenant: str = Field("local", description="the tenant of every request while auth is off")

    # --- tenants, auth and limits -------------------------------------------------------------
    auth_enabled: bool = Field(False, description="require an API key (API) or a login (web pages)")
    secret_key: str | None = Field(None, description="signs session cookies; default: generated once into data_dir")
    rate_limit_per_minute: int = Field(60, description="submissions per tenant per minute (429 beyond)")
    max_active_jobs: int = Field(1000, description="unfinished jobs a tenant may have at once (429 beyond)")

    # --- output audit ---------------------------------------------------------------------------
    audit_threshold: float = Field(0.8, ge=0.0, le=1.0, description="NSFW score at which the policy acts")
    audit_action: str = Field("block", pattern="^(block|flag|blur)$", description="block | flag | blur")

    # --- webhooks -------------------------------------------------------------------------------
    public_url: str = Field("http://127.0.0.1:8000", description="base of the links webhook payloads carry")
    webhook_allow_private: bool = Field(False, description="allow webhook URLs on loopback/private/link-local "
                                                           "addresses (trusted networks and tests only)")
    webhook_timeout_s: float = Field(10.0, gt=0, le=60, description="per delivery attempt")
    webhook_max_attempts: int = Field(10, ge=1, le=30, description="then the delivery is dead-lettered")
    webhook_backoff_base_s: float = Field(5.0, gt=0, description="first retry delay; doubles each retry (jittered)")
    webhook_backoff_max_s: float = Field(900.0, gt=0, description="longest retry delay (keep < visibility_timeout)")
    webhook_secret_overlap_s: int = Field(24 * 3600, ge=0, description="how long a rotated-out secret still signs")
    webhook_max_response_bytes: int = Field(64 * 1024, ge=0, description="read at most this much of an answer")
    webhook_endpoint_concurrency: int = Field(4, ge=1, description="attempts in flight per endpoint, so one "
                                                                   "slow receiver cannot hold every io thread")

    # --- cost accounting (docs/operations.md) ------------------------------------------------------
    price_per_hour: dict[str, float] = Field(
        default_factory=lambda: {"cpu": 0.10, "gpu": 2.50, "io": 0.02},
        description="USD per worker-process-hour on each queue; a stage costs device_s × price / 3600. "
                    "Defaults are a ballpark of cloud list prices (a vCPU-heavy process ~0.10, one "
                    "A10/L4-class GPU ~2.50, a thread of an io worker ~0.02); set your own, e.g. "
                    'PIXELMILL_PRICE_PER_HOUR=\'{"cpu": 0.08, "gpu": 1.9, "io": 0.01}\'')
    metrics_token: str | None = Field(None, description="when set, GET /metrics answers only requests with "
                                                        "'Authorization: Bearer <token>' (Prometheus' "
                                                        "authorization.credentials)")

    def broker(self) -> str:
        return self.broker_url or self.redis_url

    def cache_redis(self) -> str:
        return self.cache_redis_url or self.redis_url

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"


def _file_values() -> dict[str, Any]:
    path = os.environ.get("PIXELMILL_CONFIG")
    if not path:
        return {}
    return json.loads(Path(path).read_text())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (file values are overridden by the environment)."""
    file_values = _file_values()
    env_keys = {k.removeprefix("PIXELMILL_").lower() for k in os.environ if k.startswith("PIXELMILL_")}
    return Settings(**{k: v for k, v in file_values.items() if k not in env_keys})
