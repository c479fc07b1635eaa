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
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

STAGES = ("encode", "generate", "enhance", "audit")
QUEUES = ("cpu", "gpu", "io")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIXELMILL_", env_file=".env", extra="ignore")

    # --- connections -------------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="job store, latent cache and (by default) broker")
    broker_url: str | None = Field(None, description="Celery broker; defaults to redis_url")
    data_dir: Path = Field(Path("var"), description="blobs (uploads, results) and the embedded Redis live here")

    # --- models and devices --------------------------------------------------------------
    diffusion_model: str | None = Field(None, description="the default model of diffusion jobs: a name in the model "
                                                          "library, a local folder (save_pretrained) or a hub id; "
                                                          "unset = only jobs naming a library model run diffusion")
    diffusion_revision: str | None = None
    models_dir: Path = Field(Path("var/models"), description="the model library: checkpoints (diffusers folders or "
                                                            "single .safetensors files), loras/, controlnets/, "
                                                            "depth/, configs/ (README: the model library)")
    gpu_model_slots: int = Field(2, ge=1, le=32, description="checkpoints a worker process keeps loaded at once "
                                                           "(least recently used goes first)")
    lora_slots: int = Field(8, ge=1, le=128, description="LoRA adapters a loaded checkpoint keeps loaded (least "
                                                       "recently used goes first)")
    controlnets: dict[str, str] = Field(default_factory=dict, description='the ControlNet (library name) that serves '
                                                                          'each control type, e.g. {"canny": '
                                                                          '"control_v11p_sd15_canny"}; unmapped types '
                                                                          'use controlnets/<type> or a ControlNet '
                                                                          'whose name contains the type')
    depth_model: str | None = Field(None, description="the depth estimator (a name in depth/) that makes depth "
                                                      "control maps; unset: the library's first one")
    clip_model: str = Field("", description="the CLIP model (a name in clip/) that scores diffusion results against "
                                            "their prompt (CLIPScore, in audit); empty: not configured, and a "
                                            "quality policy on clipscore is refused at submit")
    face_restorer: str = Field("", description="the face restorer (a GFPGAN-class .onnx in face/) that jobs with "
                                              "face_restore run in enhance; empty: not configured, and face_restore "
                                              "is refused at submit (README: face restoration)")
    face_detector: str = Field("", description="the face detector (a YuNet .onnx in face/, e.g. "
                                              "face_detection_yunet_2023mar) that finds the faces to restore; "
                                              "empty: not configured, and face_restore is refused at submit")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    dtype: str = Field("auto", description="auto (fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16")
    queue_dtypes: dict[str, str] = Field(
        default_factory=dict,
        description='the dtype of diffusion jobs per queue they come from, e.g. {"gpu.high": "fp16", "gpu.low": '
                    '"fp32"}: a base (`gpu`) stands for its levels unless one is named; other queues use dtype')

    @field_validator("queue_dtypes")
    @classmethod
    def _known_dtypes(cls, queue_dtypes: dict[str, str]) -> dict[str, str]:
        known = ("auto", "fp32", "fp16", "bf16")
        for queue, dtype in queue_dtypes.items():
            if dtype.strip().lower() not in known:
                raise ValueError(f"queue_dtypes[{queue!r}] = {dtype!r}: use one of {', '.join(known)}")
        return {queue: dtype.strip().lower() for queue, dtype in queue_dtypes.items()}
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
    cpu_backend: Literal["auto", "openvino", "torch"] = Field(
        "auto", description="what runs diffusion on a CPU device: openvino (the UNet and VAE converted once into "
                            "models_dir/openvino/; 2-5x torch fp32 in bf16) or torch; auto: openvino where the CPU "
                            "has bf16 units (avx512_bf16 or AMX) and the package is installed, else torch "
                            "(README: running diffusion on CPUs)")
    cpu_precision: Literal["bf16", "f32"] = Field(
        "bf16", description="precision of diffusion on a CPU device: bf16 (fast; on torch, autocast) or f32 "
                            "(exact); a CPU without bf16 units runs f32")

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
        stages, engines = (*STAGES, "notify", "fetch"), ("style", "diffusion", "*")
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
    priority_promote_after_s: int = Field(180, ge=10, description="a job older than this leaves a low queue for "
                                                                  "normal, one older than twice this leaves normal "
                                                                  "for high (reaper): no starvation")
    quality_levels: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"draft": {"steps": 10, "size": 384, "queue": "gpu"},
                                 "standard": {"steps": 20, "size": 512, "queue": "gpu"},
                                 "best": {"steps": 40, "size": 768, "queue": "gpu"}},
        description="quality=draft|standard|best: defaults for steps, size (and strength) and the queue whose "
                    "workers serve its diffusion stages (give that queue the precision you want with "
                    "PIXELMILL_QUEUE_DTYPES, e.g. best on a queue `gpu-exact` at fp32)")
    sla_target_s: dict[str, float] = Field(default_factory=lambda: {"high": 60.0, "normal": 600.0, "low": 3600.0},
                                           description="per priority: the longest a job may take from submit to "
                                                       "its end; a slower one counts as a breach (dashboard, "
                                                       "/metrics)")
    max_priority: Literal["high", "normal", "low"] = Field("high", description="the highest priority a tenant may "
                                                                           "ask for, unless the admin set its own "
                                                                           "(`pixelmill policy --max-priority`)")

    # --- limits -------------------------------------------------------------------------
    max_upload_bytes: int = 25 * 1024 * 1024
    max_side: int = 8192
    max_pixels: int = 40_000_000
    max_batch_files: int = Field(100, ge=1, description="files in one batch (POST /api/v1/batches, the upload "
                                                        "form); `pixelmill submit` sends --batch-size (100) per "
                                                        "request and shrinks to this when told")
    decode_concurrency: int = Field(2, ge=1, le=64, description="uploads decoded and validated at once per web "
                                                                "process (each may hold max_pixels of pixels); "
                                                                "more wait their turn")
    max_request_bytes: int = Field(200 * 1024 * 1024, description="the largest body of an upload request "
                                                                  "(a job, a batch, the upload form); every "
                                                                  "other route takes at most 64 KiB (413 beyond)")
    max_output_pixels: int = 64_000_000

    # --- input URLs (JSON submissions: docs/api.md) ------------------------------------------
    input_allow_private: bool = Field(False, description="allow input image URLs on loopback/private/link-local "
                                                         "addresses (trusted networks and tests only)")
    input_fetch_timeout_s: float = Field(20.0, gt=0, le=300, description="the whole fetch of an input image URL, "
                                                                        "redirects included (on the io queue)")

    # --- lifetimes ------------------------------------------------------------------------
    job_ttl_s: int = 7 * 24 * 3600
    latent_ttl_s: int = Field(24 * 3600, gt=0, description="latents and their near-duplicate index")
    result_ttl_s: int = Field(24 * 3600, gt=0, description="whole results reused for identical requests, and the audit's kept NSFW scores")

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
    operator_tenant: str | None = Field(None, description="the tenant whose admin keys see every tenant's figures "
                                                          "on /dashboard and /api/v1/stats (unset: nobody, with "
                                                          "auth on)")
    allow_open: bool = Field(False, description="let `pixelmill web`/`up` listen on a non-loopback address with auth "
                                               "off (anyone who reaches it can use it); turn auth on instead")
    flower_auth: str | None = Field(None, description="user:password that `pixelmill flower` (Celery's monitor) "
                                                      "requires; it does not start without one")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host names the web answers to besides the loopback ones (localhost, 127.0.0.1, [::1], "
                    "any port), comma-separated, e.g. pixelmill.example.com,.example.org (a leading dot: "
                    "that domain and its subdomains); any other Host header is refused with 400 "
                    "(DNS rebinding)")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        """``a.example, b.example`` or a JSON list (the environment, a settings file)."""
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        if isinstance(value, list | tuple):
            return [str(host).strip().lower() for host in value if str(host).strip()]
        return value

    # --- tenants, auth and limits -------------------------------------------------------------
    auth_enabled: bool = Field(False, description="require an API key (API) or a login (web pages)")
    secret_key: str | None = Field(None, description="signs session cookies; default: generated once into data_dir")
    session_lifetime_s: int = Field(12 * 3600, gt=0, description="a login (session cookie) lasts this long; "
                                                                 "revoking its key ends it at once")
    session_cookie_secure: bool = Field(False, description="always mark the session cookie Secure (behind a "
                                                           "TLS-terminating proxy); HTTPS requests get it anyway")
    rate_limit_per_minute: int = Field(60, description="submissions per tenant per minute (429 beyond)")
    max_active_jobs: int = Field(1000, description="unfinished jobs a tenant may have at once (429 beyond)")

    # --- output audit ---------------------------------------------------------------------------
    audit_threshold: float = Field(0.8, ge=0.0, le=1.0, description="NSFW score at which the policy acts")
    audit_action: str = Field("block", pattern="^(block|flag|blur)$", description="block | flag | blur")
    quality_metric: Literal["", "clipscore", "sharpness"] = Field(
        "", description="the quality policy of tenants without their own (`pixelmill policy --quality-metric`): "
                        "the score it judges; empty: no policy (scores are recorded, nothing acts on them)")
    quality_threshold: float = Field(0.0, ge=0.0, description="the default quality policy: below this score it acts")
    quality_action: Literal["flag", "fail", "regenerate"] = Field("flag", description="the default quality policy: "
                                                                                      "flag | fail | regenerate")
    quality_max_retries: int = Field(2, ge=0, le=10, description="the default quality policy: regenerations at "
                                                                 "most (action regenerate)")

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
    webhook_max_endpoints: int = Field(20, ge=0, description="standing webhook endpoints a tenant may have "
                                                            "(each hears every event: one POST per endpoint)")

    # --- scheduled batches (`pixelmill beat`, tasks/schedules.py) -------------------------------------
    schedules: list[dict[str, Any]] = Field(
        default_factory=list,
        description='batches fired by `pixelmill beat`: a JSON list of `{"name", "cron": "*/5 * * * *" or '
                    '"every_s": 300, "folder", "out", "params": {…}, "webhook_url" (optional), "tenant" '
                    '(optional)}`; each run submits the folder\'s images that have no up-to-date result in out '
                    'as one batch (io queue) and writes the results to out/<stem>.png (README: scheduled '
                    'batches)')

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
