"""Autotune plans for gpu workers: ``pixelmill autotune`` measures and writes one (workers/autotune.py
holds the search and the plan file); a gpu-queue worker reads the plan made for its device, model
and versions when it starts.

What a plan changes, and what wins over it:

- ``dtype``: the worker loads the diffusion model in the plan's dtype, unless PIXELMILL_DTYPE is
  given explicitly (environment, .env or the settings file);
- ``max_batch``: the worker's dynamic batcher runs at most this many generate requests per call,
  unless PIXELMILL_GPU_MAX_BATCH is given explicitly. The threads pool of ``pixelmill worker
  --queues gpu`` is sized for the largest batch in the plan file (``pool_max_batch``).

The plan in use (and what the settings overrode) is in the worker's heartbeat, ``"plan"``.
Torch is imported only by the functions that look at the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tasks.settings import Settings
from workers.autotune import PLAN_FILE, Hardware, Measurement, PlanFile

PLANNED_FIELDS = {"dtype": "dtype", "max_batch": "gpu_max_batch"}  # plan field → the setting it stands for


def plan_file(settings: Settings) -> PlanFile:
    return PlanFile(Path(settings.data_dir) / PLAN_FILE)


def model_identity(settings: Settings) -> str:
    """The default diffusion model as jobs name it, with its revision (library fingerprint) when known."""
    from tasks.models import resolve_model

    choice = resolve_model(settings)
    return f"{choice.name}@{choice.revision}" if choice.revision else choice.name


def hardware(settings: Settings, device: str) -> Hardware:
    import diffusers
    import torch

    from workers.autotune import device_hardware

    name, memory = device_hardware(device)
    return Hardware(device=device, device_name=name, memory_bytes=memory, torch=torch.__version__,
                    diffusers=diffusers.__version__, model=model_identity(settings))


def run_autotune(settings: Settings, *, size: int, steps: int, dtypes: list[str] | None = None,
                 max_batch: int = 64, repeats: int = 3,
                 on_point: Callable[[Measurement], None] | None = None) -> dict[str, Any]:
    """Measure on the worker's device (the ``device`` setting), save the plan, return it."""
    from tasks.worker_runtime import WorkerRuntime
    from workers.autotune import candidate_dtypes, engine_measure, make_plan, search
    from workers.devices import pick_device

    device = pick_device(settings.device)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)

    from tasks.models import resolve_model
    from workers.devices import default_dtype
    from workers.diffusion import DiffusionEngine

    choice = resolve_model(settings)
    in_library = choice.entry is not None and choice.name == choice.entry.name  # as WorkerRuntime.diffusion
    options = WorkerRuntime(settings).engine_options()

    def load(dtype: str) -> DiffusionEngine:
        # as a worker loads it (engine options, CPU backend), outside the process's resident models:
        # engine_measure holds one at a time
        return DiffusionEngine.load(choice.source, device=device, dtype=default_dtype(device, dtype),
                                    revision=None if in_library else settings.diffusion_revision,
                                    options=options, config=choice.config, lora_slots=settings.lora_slots)

    measure = engine_measure(load, device=device, size=size, steps=steps, repeats=repeats, on_point=on_point)
    result = search(measure, dtypes=dtypes or candidate_dtypes(device), max_batch=max_batch)
    plan = make_plan(result, hardware=hardware(settings, device), size=size, steps=steps)
    plan_file(settings).save(plan)
    return plan


def plan_for_worker(settings: Settings) -> tuple[Settings, dict[str, Any] | None]:
    """The settings a gpu worker runs with once its plan is applied, and what its heartbeat shows
    of the plan (None: no plan for this device, model and versions)."""
    plans = plan_file(settings)
    if not plans.path.exists() or not settings.diffusion_model:
        return settings, None
    from workers.devices import pick_device

    plan = plans.find(hardware(settings, pick_device(settings.device)))
    if plan is None:
        return settings, None
    explicit = settings.model_fields_set
    update = {setting: plan[field] for field, setting in PLANNED_FIELDS.items() if setting not in explicit}
    shown = {name: plan.get(name) for name in ("key", "dtype", "max_batch", "images_per_s", "p95_s", "size",
                                                "steps", "created_at")}
    shown["applied"] = sorted(field for field, setting in PLANNED_FIELDS.items() if setting in update)
    shown["overridden"] = sorted(field for field, setting in PLANNED_FIELDS.items() if setting in explicit)
    return settings.model_copy(update=update), shown


def pool_max_batch(settings: Settings) -> int:
    """The batch a gpu worker's threads pool is sized for (stack.supervisor.plan_worker): the
    gpu_max_batch setting when given explicitly or when there is no plan file, else the largest max
    batch in the plan file (the worker picks its own plan once it knows its device: a file with plans
    of several devices may give it spare threads). Reads JSON only: no torch, no device."""
    if "gpu_max_batch" in settings.model_fields_set:
        return settings.gpu_max_batch
    try:
        planned = plan_file(settings).largest_batch()
    except ValueError:
        planned = None
    return min(planned, 64) if planned else settings.gpu_max_batch
