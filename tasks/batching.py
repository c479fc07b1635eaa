"""Dynamic batching of generate on a gpu worker: the worker runs generate tasks on a threads
pool; each task thread hands its request to one GenerateBatcher per process and waits for its
own image. Compatible requests (same model, dtype, latent size, steps, strength, guidance, LoRAs and
ControlNets) share one pipeline call; every task still acks, records progress and fails on its
own (acks-late per job). Each request's prompt embeddings come from the prompt cache when given.
Requests at different dtypes (from queues of different precision: tasks.quality.queue_dtype) never
share a batch: each runs on the model resident at its own dtype."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from workers.batching import Batched, DynamicBatcher
from workers.cpu_backend import clear_route, last_route
from workers.diffusion import GenerateParams
from workers.prompts import PromptEmbeds
from workers.residency import LoadedDiffusion

GENERATE_TASK = "pixelmill.generate"

# on_step(done, total, latents) → stop?: a request's own progress reporter, given its own latents.
StepReporter = Callable[[int, int, torch.Tensor], bool]


@dataclass(frozen=True, eq=False)
class GenerateRequest:
    job_id: str
    latents: torch.Tensor  # (1, 4, h, w)
    params: GenerateParams
    on_step: StepReporter | None = None
    ran: dict[str, str] = field(default_factory=dict)  # filled by the call: {"backend": "openvino-bf16"}
    model: str | None = None  # a library name; None: the default model
    control_images: list[np.ndarray] = field(default_factory=list)  # one map per params.controls
    scope: Any = None  # the job's cache scope (cache.scopes.Scope), for its prompt-cache lookups
    dtype: str | None = None  # the precision it runs at (its queue's); None: the worker's

    def batch_key(self) -> Hashable:
        return (self.model, self.dtype, tuple(self.latents.shape), self.params.batch_key())


# prompts(loaded, request) → the request's prompt embeddings (from a cache, or encoded; may note the
# tier in request.ran["prompt"]), called with the request's LoRAs active on the engine.
PromptLookup = Callable[[LoadedDiffusion, GenerateRequest], PromptEmbeds]


def generate_requests(loaded: LoadedDiffusion, requests: list[GenerateRequest], *,
                      prompts: PromptLookup | None = None) -> list[np.ndarray]:
    """Run requests as one pipeline call; each reporter sees its own slice of the latents. The
    batch stops early only when every member asks to (all canceled); a member canceled alone
    finishes with its batch and its output is dropped when its stage tries to finish."""

    def on_step(done: int, total: int, latents: torch.Tensor) -> bool:
        stops = [r.on_step(done, total, latents[i:i + 1]) if r.on_step else False for i, r in enumerate(requests)]
        return all(stops)

    engine = loaded.engine
    controls = [r.control_images for r in requests] if requests[0].params.controls else None
    clear_route()
    with torch.inference_mode(), engine.using(requests[0].params.loras):
        embeds = [prompts(loaded, r) for r in requests] if prompts is not None else None
        images = engine.generate_batch([r.latents for r in requests], [r.params for r in requests],
                                       on_step=on_step, embeds=embeds, control_images=controls)
    backend = last_route() or f"torch-{loaded.dtype_name}"  # the backend that ran the UNet (this thread)
    for request in requests:
        request.ran["backend"] = backend
    return images


def generate_requests_in_worker() -> int:
    """Generate requests this worker has taken from the broker (running or about to run)."""
    from celery.worker import state

    return sum(1 for request in list(state.reserved_requests) if request.name == GENERATE_TASK)


class GenerateBatcher:
    """One per worker process: a DynamicBatcher of GenerateRequests over the resident model."""

    def __init__(self, load: Callable[..., LoadedDiffusion], *, max_batch: int, max_wait_s: float,
                 expected: Callable[[], int] | None = None, prompts: PromptLookup | None = None) -> None:
        self._load = load  # load() → the default model; load(name) → that library model
        self._prompts = prompts
        self._batcher: DynamicBatcher[GenerateRequest, np.ndarray] = DynamicBatcher(
            self._run, key=GenerateRequest.batch_key, max_batch=max_batch, max_wait_s=max_wait_s,
            expected=expected or self._on_their_way, name="pixelmill-generate-batcher")

    @property
    def max_batch(self) -> int:
        return self._batcher.max_batch

    @property
    def max_wait_s(self) -> float:
        return self._batcher.max_wait_s

    def run(self, request: GenerateRequest) -> Batched[np.ndarray]:
        """Block until ``request``'s image is made (in some batch); raise what making it raised."""
        return self._batcher.run(request)

    def close(self) -> None:
        self._batcher.close()

    def _run(self, requests: list[GenerateRequest]) -> list[np.ndarray]:
        model, dtype = requests[0].model, requests[0].dtype  # the same for the whole batch (its key)
        loaded = self._load(model, dtype=dtype) if dtype is not None else (
            self._load() if model is None else self._load(model))
        return generate_requests(loaded, requests, prompts=self._prompts)

    def _on_their_way(self) -> int:
        return generate_requests_in_worker() - self._batcher.in_flight
