"""What a worker process adds to the services to run stages: the diffusion engine (resident,
one per process), the dynamic batcher of generate calls, the audit model and warm-up.

Built in the worker's lifecycle (tasks.lifecycle), in the process that runs the engines; the
web app and the io worker use ``tasks.services`` alone and never import torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

from cache.policy import check_memory_policy
from safety.nsfw import get_classifier
from tasks.batching import GenerateBatcher
from tasks.jobs import JobParams
from tasks.services import Services
from tasks.settings import get_settings
from workers import residency
from workers.diffusion import EngineOptions

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime(Services):
    _batcher: GenerateBatcher | None = field(default=None, init=False, repr=False)

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
def get_worker_runtime() -> WorkerRuntime:
    return WorkerRuntime(get_settings())
