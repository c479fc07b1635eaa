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
from tasks.engine_backend import cpu_backend_options
from tasks.errors import PixelmillError
from tasks.jobs import JobParams
from tasks.models import resolve_clip, resolve_depth, resolve_model
from tasks.quality import queue_dtype
from tasks.services import Services
from tasks.settings import get_settings
from workers import residency
from workers.diffusion import EngineOptions
from workers.errors import EngineError

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime(Services):
    _batcher: GenerateBatcher | None = field(default=None, init=False, repr=False)
    plan: dict | None = field(default=None, init=False)  # the autotune plan in use (tasks.autotune), as shown

    def adopt_plan(self) -> None:
        """A gpu worker, before it loads anything: take the dtype and max batch of the autotune plan
        made for this device, model and versions, where the settings do not say otherwise."""
        from tasks.autotune import plan_for_worker

        try:
            self.settings, self.plan = plan_for_worker(self.settings)
        except Exception as e:  # noqa: BLE001 — a plan is an optimisation: never keep a worker from starting
            log.warning("autotune plan not used: %s: %s", type(e).__name__, e)
            return
        if self.plan is not None:
            log.info("autotune plan %s: dtype %s, max batch %s (applied: %s; overridden by settings: %s)",
                     self.plan["key"], self.plan["dtype"], self.plan["max_batch"],
                     ", ".join(self.plan["applied"]) or "nothing", ", ".join(self.plan["overridden"]) or "nothing")

    def dtype_for(self, queue: str | None) -> str:
        """The dtype of a diffusion stage whose message came from ``queue`` (PIXELMILL_QUEUE_DTYPES,
        else PIXELMILL_DTYPE or the autotune plan's)."""
        return queue_dtype(queue, queue_dtypes=self.settings.queue_dtypes, default=self.settings.dtype)

    def diffusion(self, model: str | None = None, *, dtype: str | None = None) -> residency.LoadedDiffusion:
        """The engine of ``model`` (a library name; None: the default model) at ``dtype`` (None: the
        worker's dtype), loaded once and kept among the PIXELMILL_GPU_MODEL_SLOTS most recently used."""
        s = self.settings
        choice = resolve_model(s, model)
        in_library = choice.entry is not None and choice.name == choice.entry.name
        return residency.diffusion_engine(
            model=choice.source,
            revision=None if in_library else s.diffusion_revision,
            device=s.device,
            dtype=dtype or s.dtype,
            options=self.engine_options(),
            name=choice.name if in_library else None,
            fingerprint=choice.revision if in_library else None,
            config=choice.config,
            slots=s.gpu_model_slots,
            lora_slots=s.lora_slots,
        )

    def engine_options(self) -> EngineOptions:
        """The speed options the settings give a loaded pipeline (attention, compile, CPU backend …)."""
        s = self.settings
        return EngineOptions(attention=s.attention, channels_last=s.channels_last, torch_compile=s.torch_compile,
                             vae_slicing=s.vae_slicing, cpu=cpu_backend_options(s))

    def depth(self):
        """The depth estimator of depth control maps (the library's, loaded once)."""
        entry = resolve_depth(self.settings)
        return residency.depth_estimator(path=str(entry.path), fingerprint=entry.fingerprint, device=self.settings.device)

    def clip_scorer(self):
        """The CLIP model that scores results against their prompt (PIXELMILL_CLIP_MODEL), loaded once;
        None when none is configured."""
        if not self.settings.clip_model:
            return None
        from workers.clip_score import load_scorer

        entry = resolve_clip(self.settings)
        return load_scorer(path=str(entry.path), fingerprint=entry.fingerprint,
                           device=residency.pick_device(self.settings.device))

    def warm_clip(self) -> None:
        """Load the CLIP model (PIXELMILL_CLIP_MODEL) before taking work, so the first audit does not pay
        for it. One that cannot be loaded is logged, not fatal: audit tries again, and fails only the
        jobs whose quality policy needs the score."""
        try:
            scorer = self.clip_scorer()
        except (PixelmillError, EngineError) as e:
            log.warning("CLIP model not loaded at start: %s", e)
            return
        if scorer is not None:
            log.info("CLIP model %s resident on %s", scorer.name, scorer.device)

    def loaded_diffusion(self) -> residency.LoadedDiffusion | None:
        """The diffusion model this process used last, if it holds one (never loads)."""
        return residency.latest()

    def generate_batcher(self) -> GenerateBatcher | None:
        """The process's dynamic batcher of generate calls, when this process batches (a threads
        pool on the gpu queue with gpu_max_batch > 1); None runs each generate alone."""
        return self._batcher

    def warm_up(self, *, batching: bool = False, queues: list[str] | None = None) -> None:
        """Before the process takes work: the classifier and the CLIP model (audit's), the diffusion
        model (when preloading) at each dtype the ``queues`` it consumes ask for, one small generation
        through each, and the batcher when this process batches."""
        get_classifier()  # every worker may audit: load the classifier before taking work
        self.warm_clip()
        report = check_memory_policy(self.cache_backend, shared_with_broker=self.settings.cache_redis() == self.settings.broker())
        for problem in report.problems:
            log.warning("latent cache: %s", problem)
        if self.settings.preload_models and self.settings.diffusion_model:
            warmed: list[residency.LoadedDiffusion] = []
            for dtype in dict.fromkeys(self.dtype_for(queue) for queue in (queues or [None])):
                loaded = self.diffusion(dtype=dtype)
                if any(loaded is done for done in warmed):  # "auto" and the dtype it means: one copy
                    continue
                warmed.append(loaded)
                # torch.compile specialises on shapes: warm a compiled UNet up at the working size (the
                # default, square), so the first real request does not pay for the compile.
                size = JobParams.model_fields["size"].default if self.settings.torch_compile else 64
                loaded.engine.warm_up(size=size)
                log.info("diffusion model %s resident on %s (%s), warmed up", loaded.engine.model, loaded.device,
                         loaded.dtype_name)
        if batching and self.settings.gpu_max_batch > 1 and self._batcher is None:
            from tasks.generation import prompt_lookup  # it imports the stages' helpers, which import this module

            self._batcher = GenerateBatcher(self.diffusion, max_batch=self.settings.gpu_max_batch,
                                            max_wait_s=self.settings.gpu_max_wait_ms / 1000,
                                            prompts=prompt_lookup(self.cache))
            log.info("batching generate: up to %d per call, waiting at most %d ms", self.settings.gpu_max_batch,
                     self.settings.gpu_max_wait_ms)


@lru_cache(maxsize=1)
def get_worker_runtime() -> WorkerRuntime:
    return WorkerRuntime(get_settings())
