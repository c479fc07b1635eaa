"""The OpenVINO CPU backend on a real worker: a gpu-queue worker on a CPU device (a dev stack
without a GPU: threads pool, dynamic batching, model preloaded) converts the tiny model at start,
and diffusion jobs run on it — fp32 equal to torch, cancel mid-generate, batches equal to solo
runs. The session's own gpu worker (torch) stops consuming while this module's worker runs, so
every job here lands on it."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from safety.validate import decode_png
from stack.supervisor import plan_worker
from tests.conftest import (GPU_MAX_BATCH, SESSION_DIR, encode, photo, routes_to, start_worker, stop_worker,
                            wait_for_job, wait_worker_ready)
from workers.diffusion import DiffusionEngine, EngineOptions, GenerateParams, normalise_for_diffusion

pytestmark = pytest.mark.integration

MODELS_DIR = Path(os.environ.get("PIXELMILL_MODELS_DIR") or SESSION_DIR / "models")  # the tiny library (conftest)
PARAMS = {"engine": "diffusion", "strength": 0.75, "steps": 8, "guidance": 7.5, "size": 64}
OV_ENV = {"PIXELMILL_CPU_BACKEND": "openvino", "PIXELMILL_CPU_PRECISION": "f32", "PIXELMILL_DEVICE": "cpu",
          "PIXELMILL_MODELS_DIR": str(MODELS_DIR)}


def _options(backend: str, precision: str) -> EngineOptions:
    from workers.cpu_backend import CpuBackendOptions

    return EngineOptions(cpu=CpuBackendOptions(backend=backend, precision=precision,
                                               cache_dir=str(MODELS_DIR / "openvino"), threads=1))


@pytest.fixture(scope="module")
def ov_worker(redis_server, tiny_model):
    """A gpu-queue worker with the OpenVINO backend (f32, for exact comparisons); the session's gpu
    worker, if it runs, stops consuming meanwhile."""
    from tasks.celery_app import app as celery

    session_gpu = [f"gpu-{os.getpid()}@{socket.gethostname()}"]
    celery.control.cancel_consumer("gpu", destination=session_gpu, reply=True, timeout=2)
    plan = plan_worker("gpu", gpu_max_batch=GPU_MAX_BATCH)
    proc = start_worker(queues="gpu", concurrency=plan.concurrency, pool=plan.pool, name="ov",
                        extra_env={**plan.env, **OV_ENV})
    try:
        wait_worker_ready(proc, name="ov", timeout_s=240)  # answers once converted and warmed up
        yield proc
    finally:
        stop_worker(proc)
        celery.control.add_consumer("gpu", destination=session_gpu, reply=True, timeout=2)


@pytest.fixture(scope="module")
def ov_app(redis_server):
    from tasks.settings import Settings
    from web import create_app

    flask_app = create_app(Settings(routes=routes_to("gpu")))  # every stage on the OpenVINO worker
    flask_app.config["TESTING"] = True
    return flask_app


def _submit(app, image: bytes, **params) -> str:
    with app.test_client() as client:
        response = client.post("/api/v1/jobs", data={"image": (io.BytesIO(image), "photo.png"),
                                                     "params": json.dumps({**PARAMS, **params})},
                               content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _fetch(app):
    client = app.test_client()
    return lambda job_id: client.get(f"/api/v1/jobs/{job_id}").get_json()


def _images(app, job_id: str) -> tuple[np.ndarray, np.ndarray]:
    rt = app.extensions["pixelmill"]
    record = rt.store.fetch(job_id)
    return (decode_png(rt.blobs.fetch(record.outputs["normalized"])),
            decode_png(rt.blobs.fetch(record.outputs["generated"])))


def test_worker_converts_at_start_and_says_so(ov_worker, redis_client):
    from tasks.heartbeat import fetch_workers

    (conversion,) = [p for p in (MODELS_DIR / "openvino").iterdir() if not p.name.startswith(".")]
    meta = json.loads((conversion / "meta.json").read_text())
    assert set(meta["parts"]) == {"unet", "vae_encoder", "vae_decoder"} and meta["weights"] == "f32"
    assert conversion.name.startswith("tiny-") and f"-ov{meta['openvino']}-" in conversion.name
    deadline = time.monotonic() + 15
    while True:
        ours = [w for w in fetch_workers(redis_client) if w.hostname.startswith("ov-") and w.state == "ready"]
        if ours and ours[0].backend or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ours and ours[0].backend == "openvino-f32" and ours[0].converting is None


def test_fp32_job_equals_the_torch_backend(ov_worker, ov_app, tiny_model):
    job_id = _submit(ov_app, encode(photo("coffee", size=80)), seed=11, prompt="a cup")
    job = wait_for_job(_fetch(ov_app), job_id, timeout_s=120)
    assert job["status"] == "succeeded", job
    generate = job["stages"]["generate"]
    assert generate["queue"] == "gpu" and generate["cache"]["backend"] == "openvino-f32"
    normalized, served = _images(ov_app, job_id)
    torch_engine = DiffusionEngine.load(str(tiny_model))  # plain torch fp32 in this process
    with torch.inference_mode():
        expected = torch_engine.generate(torch_engine.encode(normalized), GenerateParams(
            prompt="a cup", strength=0.75, steps=8, guidance=7.5, seed=11))
    assert served.shape == expected.shape
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 2


def test_cancel_mid_generate(ov_worker, ov_app):
    job_id = _submit(ov_app, encode(photo("astronaut", size=256)), seed=3, size=256, steps=150, strength=1.0)
    fetch, client = _fetch(ov_app), ov_app.test_client()
    deadline = time.monotonic() + 60
    job = fetch(job_id)
    while (job.get("progress") or {}).get("step", 0) < 2:
        assert time.monotonic() < deadline and job["status"] not in ("succeeded", "failed"), job
        time.sleep(0.05)
        job = fetch(job_id)
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    job = wait_for_job(fetch, job_id, timeout_s=60)
    assert job["status"] == "canceled"
    time.sleep(1.5)  # the worker stops at its next step; nothing runs after it
    job = fetch(job_id)
    assert job["progress"] is None or job["progress"]["step"] < 150
    assert job["stages"]["generate"]["state"] != "done" and job["stages"]["enhance"]["attempts"] == 0


def test_batched_jobs_equal_their_solo_runs(ov_worker, ov_app, tiny_model):
    images = [encode(photo(name, size=80)) for name in ("coffee", "chelsea", "astronaut", "rocket")]
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda i: _submit(ov_app, images[i], seed=100 + i, prompt=f"picture {i}"), range(4)))
    jobs = [wait_for_job(_fetch(ov_app), job_id, timeout_s=120) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, jobs
    generate = [job["stages"]["generate"] for job in jobs]
    assert {g["cache"]["backend"] for g in generate} == {"openvino-f32"}
    sizes = [g["cache"]["batch_size"] for g in generate]
    assert max(sizes) >= 2, f"no generate call was shared: batch sizes {sizes}"
    engine = DiffusionEngine.load(str(tiny_model), options=_options("openvino", "f32"))  # the conversion, reused
    assert engine.backend.label == "openvino-f32"
    for i, job_id in enumerate(ids):
        normalized, served = _images(ov_app, job_id)
        with torch.inference_mode():
            alone = engine.generate(engine.encode(normalized), GenerateParams(
                prompt=f"picture {i}", strength=0.75, steps=8, guidance=7.5, seed=100 + i))
        assert np.abs(served.astype(int) - alone.astype(int)).max() <= 1, f"job {i} differs from its solo run"


def test_bf16_is_close_to_torch_and_a_failed_parity_check_means_torch(ov_worker, tiny_model, monkeypatch, caplog):
    from workers import cpu_backend

    normalized = normalise_for_diffusion(photo("chelsea", size=80), size=64)
    params = GenerateParams(prompt="a cat", strength=0.75, steps=8, seed=5)

    def run(engine: DiffusionEngine) -> np.ndarray:
        with torch.inference_mode():
            return engine.generate(engine.encode(normalized), params).astype(int)

    exact = run(DiffusionEngine.load(str(tiny_model)))
    bf16 = DiffusionEngine.load(str(tiny_model), options=_options("openvino", "bf16"))
    if cpu_backend.has_bf16_units(cpu_backend.cpu_flags()):
        assert bf16.backend.label == "openvino-bf16"
        assert np.abs(run(bf16) - exact).mean() < 3  # bf16: close, not equal
    else:  # bf16 asked on a CPU without bf16 units: f32, saying why
        assert bf16.backend.label == "openvino-f32" and "no bf16 units" in bf16.backend.reason
        assert np.abs(run(bf16) - exact).max() <= 1

    monkeypatch.setattr(cpu_backend, "PARITY_TOLERANCE", 0.0)  # no conversion is that exact
    with caplog.at_level(logging.ERROR, logger="workers.cpu_backend"):
        refused = DiffusionEngine.load(str(tiny_model), options=_options("openvino", "f32"))
    assert refused.backend.label == "torch-f32" and "differs from torch" in refused.backend.reason
    assert any("refusing OpenVINO" in r.getMessage() for r in caplog.records)
    assert np.array_equal(run(refused), exact)


def test_dashboard_shows_backend_and_conversion(ov_app, redis_client):
    from dataclasses import asdict

    from tasks.heartbeat import WorkerInfo, worker_key

    info = WorkerInfo(hostname="converting-host", pid=4242, queues=["cpu"], pool="prefork", concurrency=1,
                      state="warming", backend=None, started_at=time.time(), seen_at=time.time(),
                      memory={"rss_bytes": 2**30},
                      converting={"model": "sd15", "part": "unet", "step": 1, "steps": 3, "elapsed_s": 12.0,
                                  "waiting": False})
    ready = WorkerInfo(hostname="ov-host", pid=4243, queues=["gpu"], pool="threads", concurrency=5, state="ready",
                       device="cpu", dtype="fp32", model="sd15", backend="openvino-bf16", started_at=time.time(),
                       seen_at=time.time(), memory={"rss_bytes": 2**30})
    for item in (info, ready):
        redis_client.set(worker_key(item.hostname, item.pid), json.dumps(asdict(item)), ex=20)
    try:
        page = ov_app.test_client().get("/dashboard").get_data(as_text=True)
    finally:
        redis_client.delete(worker_key(info.hostname, info.pid), worker_key(ready.hostname, ready.pid))
    assert "converting for OpenVINO: unet (1/3)" in page
    assert "openvino-bf16" in page


def test_lora_and_controlnet_calls_run_torch_on_the_same_engine(ov_worker, tiny_model):
    """A call with a LoRA active, or with a ControlNet, takes the torch UNet (same weights, same
    result as a torch engine); a plain call afterwards, LoRA switched off, takes OpenVINO again."""
    from workers.adapters import LoraUse
    from workers.controlnet import ControlUse
    from workers.cpu_backend import clear_route, last_route

    library = Path(os.environ["PIXELMILL_MODELS_DIR"])
    lora = LoraUse(name="tiny-style", path=str(library / "loras" / "tiny-style.safetensors"), weight=1.0,
                   fingerprint="test")
    control = ControlUse(name="canny", path=str(library / "controlnets" / "canny"), fingerprint="test", type="canny")
    normalized = normalise_for_diffusion(photo("coffee", size=80), size=64)
    edges = np.ascontiguousarray(np.repeat((normalized.mean(axis=2, keepdims=True) > 120).astype(np.uint8) * 255,
                                           3, axis=2))
    cases = {"lora": (GenerateParams(prompt="x", strength=0.75, steps=6, seed=2, loras=(lora,)), None),
             "control": (GenerateParams(prompt="x", strength=0.75, steps=6, seed=2, controls=(control,)), [[edges]]),
             "plain": (GenerateParams(prompt="x", strength=0.75, steps=6, seed=2), None)}

    def run(engine: DiffusionEngine, name: str) -> tuple[np.ndarray, str | None]:
        params, maps = cases[name]
        clear_route()
        with torch.inference_mode():
            image = engine.generate_batch([engine.encode(normalized)], [params], control_images=maps)[0]
        return image.astype(int), last_route()

    ov = DiffusionEngine.load(str(tiny_model), options=_options("openvino", "f32"))
    plain_torch = DiffusionEngine.load(str(tiny_model))
    for name in ("lora", "control", "plain"):
        got, route = run(ov, name)
        expected, _ = run(plain_torch, name)
        assert route == ("openvino-f32" if name == "plain" else "torch-f32"), name
        assert np.abs(got - expected).max() <= 2, name


def test_models_convert_finds_the_conversion_the_worker_made(ov_worker, tiny_model):
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-m", "stack.cli", "models", "convert", "--model", str(tiny_model)],
                          cwd=ROOT, env={**os.environ, **OV_ENV}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (conversion,) = [p for p in (MODELS_DIR / "openvino").iterdir() if not p.name.startswith(".")]
    assert f"conversion in {conversion}" in done.stdout and "(openvino-f32)" in done.stdout
    assert "converted the unet" not in done.stderr  # reused, not converted again
