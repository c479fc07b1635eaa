"""The CPU backend options of a worker's engines, from the settings (workers/cpu_backend.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tasks.settings import Settings
from workers.cpu_backend import CpuBackendOptions


def openvino_dir(settings: Settings) -> Path:
    """Where OpenVINO conversions are kept: beside the models, in the model library's folder."""
    return Path(settings.models_dir) / "openvino"


def cpu_backend_options(settings: Settings) -> CpuBackendOptions:
    return CpuBackendOptions(backend=settings.cpu_backend, precision=settings.cpu_precision,
                             cache_dir=str(openvino_dir(settings)), threads=settings.torch_threads)



def convert_ahead(settings: Settings) -> dict[str, Any]:
    """Load the default diffusion model as a CPU worker does with the OpenVINO backend, so that its
    conversion is made (or found), parity-checked and compiled now rather than at the first job.
    Returns {"ok", "model", "backend", "folder", "meta", "reason", "seconds"}."""
    from tasks.worker_runtime import WorkerRuntime
    from workers.openvino_backend import read_meta

    started = time.monotonic()
    forced = settings.model_copy(update={"cpu_backend": "openvino", "device": "cpu", "dtype": "fp32"})
    loaded = WorkerRuntime(forced).diffusion()
    backend = loaded.engine.backend
    folder = Path(backend.conversion) if backend.conversion else None
    return {"ok": backend.name == "openvino", "model": loaded.engine.model, "backend": backend.label,
            "folder": str(folder) if folder else None, "meta": read_meta(folder) if folder else None,
            "reason": backend.reason, "seconds": round(time.monotonic() - started, 1)}
