"""Model residency: each process loads a model once and keeps it for every later task."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from workers.devices import default_dtype, dtype_name, pick_device
from workers.diffusion import DiffusionEngine, EngineOptions
from workers.errors import EngineError


@dataclass(frozen=True)
class LoadedDiffusion:
    engine: DiffusionEngine
    device: str
    dtype_name: str


@lru_cache(maxsize=2)
def diffusion_engine(*, model: str | None, revision: str | None, device: str, dtype: str,
                     options: EngineOptions = EngineOptions()) -> LoadedDiffusion:
    if not model:
        raise EngineError(
            "diffusion is not enabled on this server: set PIXELMILL_DIFFUSION_MODEL to a model id "
            "or a local folder, or pick the style engine"
        )
    chosen = pick_device(device)
    torch_dtype = default_dtype(chosen, dtype)
    engine = DiffusionEngine.load(model, device=chosen, dtype=torch_dtype, revision=revision, options=options)
    return LoadedDiffusion(engine=engine, device=chosen, dtype_name=dtype_name(torch_dtype))


def is_loaded() -> bool:
    return diffusion_engine.cache_info().currsize > 0
