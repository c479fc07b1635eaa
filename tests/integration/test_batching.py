"""Dynamic batching on the real gpu-queue worker (a threads pool with the tiny model resident):
concurrent diffusion jobs share generate calls, and each still gets the image its own seed
gives when run alone, its own progress record and its own cost share."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from safety.validate import decode_png
from tests.conftest import encode, photo, wait_for_job
from tasks.worker_runtime import WorkerRuntime
from workers.diffusion import GenerateParams

pytestmark = pytest.mark.integration

PARAMS = {"engine": "diffusion", "strength": 0.75, "steps": 8, "guidance": 7.5, "size": 64}


def _submit(app, image: bytes, **params) -> str:
    with app.test_client() as client:  # one client per thread
        response = client.post("/api/v1/jobs", data={"image": (io.BytesIO(image), "photo.png"),
                                                     "params": json.dumps({**PARAMS, **params})},
                               content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def test_concurrent_jobs_share_generate_calls_and_keep_their_own_seeds(app, client, workers):
    images = [encode(photo(name, size=80)) for name in ("coffee", "chelsea", "astronaut", "rocket")]
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda i: _submit(app, images[i], seed=100 + i, prompt=f"picture {i}"), range(4)))
    jobs = [wait_for_job(lambda job_id: client.get(f"/api/v1/jobs/{job_id}").get_json(), i, timeout_s=180)
            for i in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, jobs

    generate = [job["stages"]["generate"] for job in jobs]
    assert {g["queue"] for g in generate} == {"gpu"}
    sizes = [g["cache"]["batch_size"] for g in generate]
    assert max(sizes) >= 2, f"no generate call was shared: batch sizes {sizes}"
    for g in generate:  # a shared call's device time is split among its members
        assert 0 < g["device_s"] <= g["seconds"] + 0.05

    rt = WorkerRuntime(app.extensions["pixelmill"].settings)  # the engine as a worker loads it
    engine = rt.diffusion().engine
    for i, job_id in enumerate(ids):  # the image each seed gives alone, in this process
        record = rt.store.fetch(job_id)
        normalized = decode_png(rt.blobs.fetch(record.outputs["normalized"]))
        with torch.inference_mode():
            alone = engine.generate(engine.encode(normalized), GenerateParams(
                prompt=f"picture {i}", strength=0.75, steps=8, guidance=7.5, seed=100 + i))
        served = decode_png(rt.blobs.fetch(record.outputs["generated"]))
        assert served.shape == alone.shape
        assert np.abs(served.astype(int) - alone.astype(int)).max() <= 2, f"job {i} differs from its seed alone"
