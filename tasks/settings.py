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
from typing import Any

from pydantic import Field
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
    preload_models: bool = Field(False, description="load the diffusion model when a worker process starts")

    # --- routing --------------------------------------------------------------------------
    routes: dict[str, str] = Field(
        default_factory=dict,
        description='overrides of the routing policy, e.g. {"generate:diffusion": "cpu"}',
    )

    # --- Celery timing (visibility_timeout > hard limit > soft limit) ----------------------
    task_soft_time_limit: int = 1500
    task_time_limit: int = 1800
    visibility_timeout: int = 3600

    # --- limits -------------------------------------------------------------------------
    max_upload_bytes: int = 25 * 1024 * 1024
    max_side: int = 8192
    max_pixels: int = 40_000_000
    max_batch_files: int = 100
    max_request_bytes: int = 200 * 1024 * 1024
    max_output_pixels: int = 64_000_000

    # --- lifetimes ------------------------------------------------------------------------
    job_ttl_s: int = 7 * 24 * 3600
    latent_ttl_s: int = 24 * 3600

    # --- web ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    default_tenant: str = "local"

    def broker(self) -> str:
        return self.broker_url or self.redis_url

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
