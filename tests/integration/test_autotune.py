"""`pixelmill autotune` on this CPU with the tiny model writes a plan into the data folder, and a
gpu-queue worker started afterwards (planned as `pixelmill worker --queues gpu` plans it) runs with
the plan's dtype and max batch and shows the plan in its heartbeat."""

from __future__ import annotations

import json
import os
import time

import pytest

from stack.cli import main
from stack.supervisor import plan_worker
from tests.conftest import start_worker, stop_worker, wait_worker_ready

pytestmark = pytest.mark.integration


def test_autotune_writes_a_plan_that_a_gpu_worker_starts_with(redis_server, redis_client, tiny_model, tmp_path,
                                                             monkeypatch, capsys):
    from tasks.autotune import pool_max_batch
    from tasks.heartbeat import fetch_workers
    from tasks.settings import Settings, get_settings

    data = tmp_path / "data"  # not the session's: later workers of other tests must not find this plan
    with monkeypatch.context() as env:
        env.setenv("PIXELMILL_DATA_DIR", str(data))
        env.delenv("PIXELMILL_GPU_MAX_BATCH")  # the plan's max batch applies when the setting is not given
        get_settings.cache_clear()
        try:
            code = main(["autotune", "--size", "64", "--steps", "2", "--max-batch", "2", "--repeats", "1"])
        finally:
            get_settings.cache_clear()
        out = capsys.readouterr().out
        assert code == 0, out
        plans = json.loads((data / "autotune.json").read_text())["plans"]
        assert len(plans) == 1
        (plan,) = plans.values()
        assert plan["device"] == "cpu" and plan["dtype"] in {"fp32", "bf16"} and plan["max_batch"] in {1, 2}
        assert {(m["dtype"], m["batch"]) for m in plan["measurements"]} >= {("fp32", 1), ("bf16", 1)}
        assert "64 px | 2 steps" in plan["key"] and f"max batch {plan['max_batch']}" in out

        planned = plan_worker("gpu", gpu_max_batch=pool_max_batch(Settings()))  # as `pixelmill worker` does
        proc = start_worker(queues="gpu", concurrency=planned.concurrency, pool=planned.pool, name="tuned",
                            extra_env={**planned.env, "PIXELMILL_DATA_DIR": str(data)})
    try:
        wait_worker_ready(proc, name="tuned", timeout_s=120)
        info = _ready_heartbeat(redis_client, fetch_workers, hostname=f"tuned-{os.getpid()}@")
        assert info.plan is not None, info
        assert info.plan["key"] == plan["key"] and info.plan["max_batch"] == plan["max_batch"]
        assert info.plan["applied"] == ["dtype", "max_batch"] and info.plan["overridden"] == []
        assert info.dtype == plan["dtype"]  # the model was loaded in the plan's dtype
        if plan["max_batch"] > 1:
            assert info.batching["max_batch"] == plan["max_batch"]
    finally:
        stop_worker(proc)


def _ready_heartbeat(client, fetch_workers, *, hostname: str, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while True:
        found = [w for w in fetch_workers(client) if w.hostname.startswith(hostname) and w.state == "ready"]
        if found and found[0].dtype:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no ready heartbeat of {hostname}: {fetch_workers(client)}")
        time.sleep(0.3)
