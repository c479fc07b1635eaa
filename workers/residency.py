"""Model residency: each process loads a model once and keeps it for every later task — up to
``slots`` checkpoints at once (PIXELMILL_GPU_MODEL_SLOTS), the least recently used going first —
and the depth estimator beside them."""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

from workers.devices import default_dtype, dtype_name, pick_device
from workers.diffusion import DiffusionEngine, EngineOptions
from workers.errors import EngineError

log = logging.getLogger(__name__)
V = TypeVar("V")


@dataclass(frozen=True)
class LoadedDiffusion:
    engine: DiffusionEngine
    device: str
    dtype_name: str
    name: str | None = None      # what jobs call it: a library name (else the engine's source)
    revision: str | None = None  # with ``name``: the library's fingerprint of its files

    @property
    def model_id(self) -> str:
        """The model as cache and batch keys name it."""
        return self.name or self.engine.model

    @property
    def model_revision(self) -> str | None:
        return self.revision if self.name else self.engine.revision


class ModelSlots(Generic[V]):
    """A least-recently-used set of loaded models, safe across threads: one load per key at a time
    (a second thread asking for the same model waits for the first load and shares it)."""

    def __init__(self) -> None:
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, load: Callable[[], V], *, slots: int) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            value = load()
            with self._lock:
                self._items[key] = value
                evicted = []
                while len(self._items) > max(1, slots):
                    evicted.append(self._items.popitem(last=False))
                self._loading.pop(key, None)
        for old_key, _ in evicted:
            log.info("model %s unloaded (least recently used of %d slots)", old_key, slots)
        if evicted:
            _free_memory()
        return value

    def latest(self) -> V | None:
        with self._lock:
            return next(reversed(self._items.values()), None)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
        _free_memory()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


_diffusion: ModelSlots[LoadedDiffusion] = ModelSlots()


def diffusion_engine(*, model: str | None, revision: str | None, device: str, dtype: str,
                     options: EngineOptions = EngineOptions(), name: str | None = None,
                     fingerprint: str | None = None, config: str | None = None, slots: int = 2,
                     lora_slots: int = 8) -> LoadedDiffusion:
    """The engine of ``model`` (a folder, a single .safetensors file with its ``config`` folder, or a
    hub id at ``revision``), loaded once and kept while it is among the ``slots`` most recently used.
    ``name`` and ``fingerprint``: what the library calls it, for cache and batch keys."""
    if not model:
        raise EngineError(
            "diffusion is not enabled on this server: set PIXELMILL_DIFFUSION_MODEL to a model id "
            "or a local folder, or pick the style engine"
        )

    chosen = pick_device(device)
    torch_dtype = default_dtype(chosen, dtype)  # "auto" and the dtype it means share one resident copy

    def load() -> LoadedDiffusion:
        engine = DiffusionEngine.load(model, device=chosen, dtype=torch_dtype, revision=revision, options=options,
                                      config=config, lora_slots=lora_slots)
        return LoadedDiffusion(engine=engine, device=chosen, dtype_name=dtype_name(torch_dtype), name=name,
                               revision=fingerprint if name else None)

    key = (model, revision, device, dtype_name(torch_dtype), options, name, fingerprint, config, lora_slots)
    return _diffusion.get(key, load, slots=slots)


def is_loaded() -> bool:
    return len(_diffusion) > 0


def latest() -> LoadedDiffusion | None:
    """The checkpoint this process used last, if it holds one (never loads)."""
    return _diffusion.latest()


def resident_models() -> list[str]:
    """The checkpoints this process holds, least recently used first."""
    return [key[5] or key[0] for key in _diffusion.keys()]  # type: ignore[index]


@lru_cache(maxsize=2)
def depth_estimator(*, path: str, fingerprint: str, device: str):
    """The depth model at ``path`` (a library folder), loaded once per process."""
    from workers.depth import DepthEstimator

    return DepthEstimator.load(path, device=pick_device(device))


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 — freeing is best effort
        pass
