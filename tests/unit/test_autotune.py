"""The autotune search (workers/autotune.py) with a fake ``measure``, the plan file, and how a gpu
worker takes a plan (tasks/autotune.py): what it applies and what explicit settings override."""

from __future__ import annotations

import pytest

from workers.autotune import Hardware, OutOfMemory, PlanFile, batch_sizes, make_plan, search


def fake(table: dict[tuple[str, int], tuple[float, float, float]], calls: list | None = None):
    def measure(dtype: str, batch: int) -> tuple[float, float, float]:
        if calls is not None:
            calls.append((dtype, batch))
        value = table[(dtype, batch)]
        if isinstance(value, Exception):
            raise value
        return value

    return measure


def test_batch_sizes_double_up_to_the_limit():
    assert batch_sizes(1) == [1]
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(12) == [1, 2, 4, 8]


def test_stops_growing_at_85_percent_of_memory():
    calls: list = []
    table = {("fp16", 1): (10.0, 0.1, 0.30), ("fp16", 2): (19.0, 0.11, 0.60), ("fp16", 4): (30.0, 0.13, 0.86),
             ("fp16", 8): (40.0, 0.2, 0.95)}
    result = search(fake(table, calls), dtypes=["fp16"], max_batch=64)
    assert (result.dtype, result.max_batch, result.images_per_s) == ("fp16", 2, 19.0)  # 4 is over the line
    assert calls == [("fp16", 1), ("fp16", 2), ("fp16", 4)]  # 8 never tried
    assert [m.verdict for m in result.measurements] == ["taken", "taken", "memory"]
    assert "86%" in result.stops["fp16"]


def test_out_of_memory_stops_growing_and_batch_one_at_the_limit_is_still_usable():
    table = {("fp16", 1): (10.0, 0.1, 0.90), ("bf16", 1): (8.0, 0.1, 0.5), ("bf16", 2): OutOfMemory("CUDA OOM")}
    result = search(fake(table), dtypes=["fp16", "bf16"], max_batch=8)
    assert (result.dtype, result.max_batch) == ("fp16", 1)  # nothing smaller exists: taken, then stop
    assert "out of memory" in result.stops["bf16"]


def test_stops_when_a_step_gains_under_5_percent():
    calls: list = []
    table = {("fp32", 1): (10.0, 0.1, 0.1), ("fp32", 2): (18.0, 0.11, 0.1), ("fp32", 4): (18.5, 0.2, 0.1),
             ("fp32", 8): (40.0, 0.3, 0.1)}
    result = search(fake(table, calls), dtypes=["fp32"], max_batch=64)
    assert (result.max_batch, result.images_per_s, result.p95_s) == (2, 18.0, 0.11)  # +2.8 %: same speed, more latency
    assert ("fp32", 8) not in calls
    assert result.measurements[-1].verdict == "gain"


def test_picks_the_best_dtype_and_batch_and_skips_a_dtype_that_fails():
    table = {("fp16", 1): RuntimeError("no fp16 kernels here"),
             ("bf16", 1): (10.0, 0.1, 0.1), ("bf16", 2): (20.0, 0.1, 0.1), ("bf16", 4): (38.0, 0.1, 0.2),
             ("fp32", 1): (6.0, 0.2, 0.1), ("fp32", 2): (11.0, 0.2, 0.2), ("fp32", 4): (20.0, 0.2, 0.3)}
    result = search(fake(table), dtypes=["fp16", "bf16", "fp32"], max_batch=4)
    assert (result.dtype, result.max_batch, result.images_per_s) == ("bf16", 4, 38.0)
    assert "no fp16 kernels" in result.stops["fp16"]
    assert result.stops["bf16"] == "reached the largest batch tried (4)"


def test_a_tie_goes_to_the_first_dtype_listed_and_nothing_usable_is_an_error():
    table = {("fp16", 1): (10.0, 0.1, 0.1), ("fp32", 1): (10.0, 0.1, 0.1)}
    assert search(fake(table), dtypes=["fp16", "fp32"], max_batch=1).dtype == "fp16"
    with pytest.raises(ValueError, match="no dtype could generate"):
        search(fake({("fp16", 1): RuntimeError("broken")}), dtypes=["fp16"], max_batch=4)


HARDWARE = Hardware(device="cuda", device_name="NVIDIA H200", memory_bytes=150_000_000_000, torch="2.13.0",
                    diffusers="0.42.1", model="sd15@abc")


def _plan(*, dtype: str, batch: int, hardware: Hardware = HARDWARE, size: int = 512, steps: int = 20) -> dict:
    table = {(dtype, b): (float(b), 0.1, 0.1) for b in batch_sizes(batch)}
    return make_plan(search(fake(table), dtypes=[dtype], max_batch=batch), hardware=hardware, size=size, steps=steps)


def test_the_plan_file_keeps_plans_by_key_and_finds_the_newest_for_this_hardware(tmp_path):
    plans = PlanFile(tmp_path / "autotune.json")
    assert plans.find(HARDWARE) is None and plans.largest_batch() is None
    first = _plan(dtype="fp16", batch=8)
    plans.save(first)
    other_torch = Hardware(**{**HARDWARE.__dict__, "torch": "2.14.0"})
    plans.save(_plan(dtype="bf16", batch=32, hardware=other_torch))
    assert plans.find(HARDWARE)["dtype"] == "fp16"  # a plan of other versions is not this one's
    newer = {**_plan(dtype="bf16", batch=16, size=768), "created_at": first["created_at"] + 1}
    plans.save(newer)
    assert plans.find(HARDWARE)["key"] == newer["key"] and "768 px" in newer["key"]
    assert len(plans.plans()) == 3 and plans.largest_batch() == 32
    plans.save({**first, "max_batch": 4})  # same key: replaced
    assert len(plans.plans()) == 3


def test_a_worker_takes_the_plan_unless_a_setting_is_explicit(tmp_path, monkeypatch):
    import tasks.autotune as autotune
    from tasks.settings import Settings

    for name in ("PIXELMILL_GPU_MAX_BATCH", "PIXELMILL_DTYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(autotune, "hardware", lambda settings, device: HARDWARE)
    monkeypatch.setattr("workers.devices.pick_device", lambda preference="auto": "cuda")
    settings = Settings(data_dir=tmp_path, diffusion_model="sd15")
    assert autotune.plan_for_worker(settings) == (settings, None)  # no plan file
    assert autotune.pool_max_batch(settings) == settings.gpu_max_batch

    PlanFile(tmp_path / "autotune.json").save(_plan(dtype="bf16", batch=16))
    tuned, shown = autotune.plan_for_worker(settings)
    assert (tuned.dtype, tuned.gpu_max_batch) == ("bf16", 16)
    assert shown["applied"] == ["dtype", "max_batch"] and shown["overridden"] == []
    assert shown["key"].startswith("NVIDIA H200 |")
    assert autotune.pool_max_batch(settings) == 16  # the threads pool is sized for the plan

    explicit = Settings(data_dir=tmp_path, diffusion_model="sd15", gpu_max_batch=4)
    tuned, shown = autotune.plan_for_worker(explicit)
    assert (tuned.dtype, tuned.gpu_max_batch) == ("bf16", 4)
    assert shown["applied"] == ["dtype"] and shown["overridden"] == ["max_batch"]
    assert autotune.pool_max_batch(explicit) == 4


class _FakeEngine:
    """Times like an engine: each call takes 10 ms plus 5 ms per image; batches over 4 run out of memory."""

    vae_scale_factor = 8

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.calls: list[int] = []

    def generate_batch(self, latents, params):
        import time

        import torch

        assert len(latents) == len(params) and tuple(latents[0].shape) == (1, 4, 8, 8)
        if len(latents) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.calls.append(len(latents))
        time.sleep(0.01 + 0.005 * len(latents))
        return [None] * len(latents)


def test_engine_measure_times_generate_batch_and_reports_running_out_of_memory():
    from workers.autotune import engine_measure

    loaded: list[_FakeEngine] = []

    def load(dtype: str) -> _FakeEngine:
        loaded.append(_FakeEngine(dtype))
        return loaded[-1]

    points = []
    measure = engine_measure(load, device="cpu", size=64, steps=2, repeats=2, on_point=points.append)
    images_per_s, p95_s, memory = measure("fp32", 4)
    assert 4 / 0.5 < images_per_s <= 4 / 0.03 and 0.03 <= p95_s < 0.5  # at least 30 ms a call of 4
    assert 0 < memory < 1  # this process's peak RSS of the machine's memory
    assert loaded[0].calls == [4, 4, 4]  # one warm-up, two timed
    measure("fp32", 2)
    assert len(loaded) == 1  # the same engine while the dtype stays
    with pytest.raises(OutOfMemory, match="Tried to allocate"):
        measure("bf16", 8)
    assert [e.dtype for e in loaded] == ["fp32", "bf16"] and [p.batch for p in points] == [4, 2]
