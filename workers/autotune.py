"""Autotune: the dtype and the largest batch of generate worth running on this device.

The search is pure: ``search(measure, dtypes=…)`` calls ``measure(dtype, batch) ->
(images_per_s, p95_s, memory_fraction)`` for batch sizes 1, 2, 4, 8, … of each dtype and stops
growing the batch when

- the batch used 85 % of the device's memory or more (``MEMORY_LIMIT``; that batch is not taken,
  except batch 1, the smallest there is), or it ran out of memory (``OutOfMemory``);
- or it gained under 5 % images/s over the batch half its size (``MIN_GAIN``; not taken either:
  the same throughput at twice the latency).

The choice is the dtype whose best batch makes the most images/s (the first dtype listed wins a
tie). Tests drive it with a fake ``measure``; ``engine_measure`` is the real one, which times an
engine's ``generate_batch``. Plans are kept in one JSON file (``PlanFile``), keyed by what they
were measured on (``plan_key``). Nothing here knows Celery, Redis or Flask; torch is imported only
by the functions that measure.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MEMORY_LIMIT = 0.85
MIN_GAIN = 0.05
PLAN_FILE = "autotune.json"
PLAN_VERSION = 1

# measure(dtype, batch) -> (images per second, p95 latency of one image in seconds, peak memory / total)
Measure = Callable[[str, int], tuple[float, float, float]]


class OutOfMemory(Exception):
    """A measurement ran out of device memory: the batch does not fit."""


@dataclass(frozen=True)
class Measurement:
    dtype: str
    batch: int
    images_per_s: float
    p95_s: float
    memory_fraction: float
    verdict: str = "taken"  # taken | memory | gain | error

    def row(self) -> str:
        return (f"{self.dtype:>5} batch {self.batch:>3}: {self.images_per_s:8.2f} images/s, p95 {self.p95_s:7.3f} s, "
                f"memory {self.memory_fraction:6.1%}  {self.verdict}")


@dataclass(frozen=True)
class SearchResult:
    dtype: str
    max_batch: int
    images_per_s: float
    p95_s: float
    measurements: list[Measurement] = field(default_factory=list)
    stops: dict[str, str] = field(default_factory=dict)  # dtype → why its batch stopped growing


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, … up to ``max_batch``."""
    sizes, size = [], 1
    while size <= max_batch:
        sizes.append(size)
        size *= 2
    return sizes


def search(measure: Measure, *, dtypes: Sequence[str], max_batch: int = 64, memory_limit: float = MEMORY_LIMIT,
           min_gain: float = MIN_GAIN) -> SearchResult:
    """The best (dtype, batch) by images/s; see the module's docstring for the rules. Raises
    ValueError when no dtype could run even one image."""
    measurements: list[Measurement] = []
    stops: dict[str, str] = {}
    best: dict[str, Measurement] = {}
    for dtype in dtypes:
        taken: Measurement | None = None
        stops[dtype] = f"reached the largest batch tried ({max_batch})"
        for batch in batch_sizes(max_batch):
            try:
                images_per_s, p95_s, memory = measure(dtype, batch)
            except OutOfMemory as e:
                measurements.append(Measurement(dtype, batch, 0.0, 0.0, 1.0, "memory"))
                stops[dtype] = f"batch {batch} ran out of memory ({e})"
                break
            except Exception as e:  # noqa: BLE001 — a dtype this device or model cannot run
                measurements.append(Measurement(dtype, batch, 0.0, 0.0, 0.0, "error"))
                stops[dtype] = f"batch {batch} failed: {type(e).__name__}: {e}"
                break
            point = Measurement(dtype, batch, images_per_s, p95_s, memory)
            if memory >= memory_limit and taken is not None:
                measurements.append(_judged(point, "memory"))
                stops[dtype] = f"batch {batch} used {memory:.0%} of the device's memory (limit {memory_limit:.0%})"
                break
            if taken is not None and images_per_s < taken.images_per_s * (1 + min_gain):
                measurements.append(_judged(point, "gain"))
                stops[dtype] = (f"batch {batch} gained {images_per_s / taken.images_per_s - 1:+.1%} images/s over "
                                f"batch {taken.batch} (needs {min_gain:+.0%})")
                break
            measurements.append(point)
            taken = point
            if memory >= memory_limit:  # batch 1 already at the limit: it is all there is
                stops[dtype] = f"batch {batch} used {memory:.0%} of the device's memory (limit {memory_limit:.0%})"
                break
        if taken is not None:
            best[dtype] = taken
    if not best:
        raise ValueError("no dtype could generate even one image: " +
                         "; ".join(f"{d}: {why}" for d, why in stops.items()))
    top = max(best.values(), key=lambda m: m.images_per_s)  # max keeps the first of equals: the listed order
    return SearchResult(dtype=top.dtype, max_batch=top.batch, images_per_s=top.images_per_s, p95_s=top.p95_s,
                        measurements=measurements, stops=stops)


def _judged(point: Measurement, verdict: str) -> Measurement:
    return Measurement(point.dtype, point.batch, point.images_per_s, point.p95_s, point.memory_fraction, verdict)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100), linear between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- the plan file ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Hardware:
    """What a plan is only valid for, besides the size and steps it was measured at."""

    device: str  # "cuda", "cpu", …
    device_name: str  # "NVIDIA H200", "Intel(R) Xeon(R) …"
    memory_bytes: int  # the device's memory (CPU: MemTotal)
    torch: str
    diffusers: str
    model: str  # the model as jobs name it, with its revision when known


def plan_key(hardware: Hardware, *, size: int, steps: int) -> str:
    """One readable line naming everything a plan depends on."""
    return (f"{hardware.device_name} | {hardware.memory_bytes // 2**20} MiB | torch {hardware.torch} | "
            f"diffusers {hardware.diffusers} | {hardware.model} | {size} px | {steps} steps")


def make_plan(result: SearchResult, *, hardware: Hardware, size: int, steps: int) -> dict[str, Any]:
    return {
        "key": plan_key(hardware, size=size, steps=steps),
        **asdict(hardware),
        "size": size,
        "steps": steps,
        "dtype": result.dtype,
        "max_batch": result.max_batch,
        "images_per_s": round(result.images_per_s, 3),
        "p95_s": round(result.p95_s, 4),
        "created_at": time.time(),
        "stops": result.stops,
        "measurements": [asdict(m) for m in result.measurements],
    }


class PlanFile:
    """``data_dir/autotune.json``: {"version": 1, "plans": {key: plan}}, written atomically."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def plans(self) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the autotune plans {self.path}: {e}; delete it and run "
                             "`pixelmill autotune` again") from e
        plans = raw.get("plans") if isinstance(raw, dict) else None
        return plans if isinstance(plans, dict) else {}

    def save(self, plan: dict[str, Any]) -> None:
        """Add ``plan``, replacing an earlier one with the same key."""
        plans = self.plans()
        plans[plan["key"]] = plan
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": PLAN_VERSION, "plans": plans}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def find(self, hardware: Hardware) -> dict[str, Any] | None:
        """The newest plan made on this hardware with this model and these versions (whatever its
        size and steps: the last `pixelmill autotune` run here wins)."""
        wanted = asdict(hardware)
        matching = [p for p in self.plans().values() if all(p.get(k) == v for k, v in wanted.items())]
        return max(matching, key=lambda p: p.get("created_at", 0), default=None)

    def largest_batch(self) -> int | None:
        """The largest max batch of any plan in the file (a gpu worker sizes its threads pool by it
        before it knows its device)."""
        batches = [int(p["max_batch"]) for p in self.plans().values() if isinstance(p.get("max_batch"), int)]
        return max(batches, default=None)


# --- measuring on a device (torch) ----------------------------------------------------------------

def candidate_dtypes(device: str) -> list[str]:
    """What to try, in order of preference on a tie: CUDA fp16, bf16, fp32; MPS fp16, fp32; CPU fp32, bf16."""
    if device.startswith("cuda"):
        return ["fp16", "bf16", "fp32"]
    if device == "mps":
        return ["fp16", "fp32"]
    return ["fp32", "bf16"]


def device_hardware(device: str) -> tuple[str, int]:
    """(name, memory in bytes) of a torch device."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        return torch.cuda.get_device_name(index), int(torch.cuda.get_device_properties(index).total_memory)
    return _cpu_name(), _mem_total()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def _meminfo_kib(path: str, field_name: str) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _mem_total() -> int:
    kib = _meminfo_kib("/proc/meminfo", "MemTotal")
    if kib is None:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return kib * 1024


class MemoryProbe:
    """The peak memory of a stretch of work as a fraction of the device's: CUDA
    max_memory_allocated over the total; elsewhere this process's peak RSS (VmHWM, reset through
    /proc/self/clear_refs where the kernel allows, else the current VmRSS) over MemTotal."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.total = device_hardware(device)[1] if device.startswith("cuda") else _mem_total()

    def reset(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass

    def fraction(self) -> float:
        if self.device.startswith("cuda"):
            import torch

            return torch.cuda.max_memory_allocated(self.device) / self.total
        kib = _meminfo_kib("/proc/self/status", "VmHWM") or _meminfo_kib("/proc/self/status", "VmRSS") or 0
        return kib * 1024 / self.total


def engine_measure(load: Callable[[str], Any], *, device: str, size: int, steps: int, repeats: int = 3,
                   on_point: Callable[[Measurement], None] | None = None) -> Measure:
    """A real ``measure``: ``load(dtype)`` gives a DiffusionEngine in that dtype (one at a time: the
    previous one is dropped first); each point runs one untimed call at that batch (warm-up, new
    shapes), then ``repeats`` timed calls of ``generate_batch`` at ``size`` px with ``steps`` steps
    (strength 1: every step runs). images/s = images made / time; p95 = of the per-call latencies
    (every image of a call waits for the whole call)."""
    import torch

    from workers.diffusion import LATENT_CHANNELS, GenerateParams

    current: dict[str, Any] = {}
    probe = MemoryProbe(device)

    def engine_for(dtype: str) -> Any:
        if current.get("dtype") != dtype:
            current.clear()
            _free(device)
            current["engine"], current["dtype"] = load(dtype), dtype
        return current["engine"]

    def measure(dtype: str, batch: int) -> tuple[float, float, float]:
        engine = engine_for(dtype)
        side = size // engine.vae_scale_factor
        noise = torch.Generator().manual_seed(0)
        latents = [torch.randn(1, LATENT_CHANNELS, side, side, generator=noise) for _ in range(batch)]
        params = [GenerateParams(prompt="autotune", strength=1.0, steps=steps, seed=i) for i in range(batch)]
        _free(device)
        probe.reset()
        seconds = []
        try:
            with torch.inference_mode():
                engine.generate_batch(latents, params)  # warm-up: kernels, allocator, new shapes
                for _ in range(max(1, repeats)):
                    started = time.perf_counter()
                    engine.generate_batch(latents, params)
                    seconds.append(time.perf_counter() - started)
        except RuntimeError as e:  # torch.OutOfMemoryError, or a kernel's "… out of memory"
            if isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower():
                raise OutOfMemory(str(e).splitlines()[0] if str(e) else "out of memory") from e
            raise
        finally:
            memory = probe.fraction()
        point = (batch * len(seconds) / sum(seconds), percentile(seconds, 95), memory)
        if on_point is not None:
            on_point(Measurement(dtype, batch, *point, verdict="measured"))
        return point

    return measure


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
