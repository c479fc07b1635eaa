"""Generation depth through the API on the session's real workers and the tiny library: ControlNet
and LoRA jobs (different from the plain image, reproducible, the same batched as alone), a
single-file checkpoint, depth control, the prompt-embedding cache, and bad input refused with 422
before any worker sees it."""

from __future__ import annotations

import io
import json
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safety.validate import decode_png
from tasks.generation import CONTROL_OUTPUT, generate_params
from tasks.worker_runtime import WorkerRuntime
from tests.conftest import encode, photo, wait_for_job

pytestmark = pytest.mark.integration

FAST = {"engine": "diffusion", "strength": 0.75, "steps": 4, "guidance": 7.5, "size": 64}


@pytest.fixture(scope="module")
def library(tiny_model: Path) -> Path:
    """The session library, plus a LoRA made for another base and a checkpoint with only .bin weights."""
    from workers.tiny_model import build_tiny_lora

    root = tiny_model.parent
    if not (root / "loras" / "other-base.safetensors").exists():
        build_tiny_lora(root / "loras" / "other-base.safetensors", cross_attention_dim=48, text_encoder=False)
    pickled = root / "pickled"
    if not pickled.exists():
        shutil.copytree(tiny_model, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
        for part in ("unet", "vae"):
            (pickled / part / "diffusion_pytorch_model.bin").write_bytes(b"never unpickled")
        (pickled / "text_encoder" / "pytorch_model.bin").write_bytes(b"never unpickled")
    return root


def _submit(client, image: bytes, **params):
    return client.post("/api/v1/jobs", data={"image": (io.BytesIO(image), "photo.png"),
                                             "params": json.dumps({**FAST, **params})},
                       content_type="multipart/form-data")


def _run(client, image: bytes, **params) -> dict:
    response = _submit(client, image, **params)
    assert response.status_code == 202, response.get_json()
    job = wait_for_job(lambda i: client.get(f"/api/v1/jobs/{i}").get_json(), response.get_json()["id"],
                       timeout_s=180)
    assert job["status"] == "succeeded", job
    return job


def _result(client, job: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(job["links"]["result"]).data)).convert("RGB"))


def test_control_and_lora_jobs_differ_from_plain_show_what_was_applied_and_reproduce(client, workers,
                                                                                     library) -> None:
    image = encode(photo("astronaut", size=96))
    plain = _result(client, _run(client, image, prompt="an astronaut", seed=11))
    canny = _run(client, image, prompt="an astronaut", seed=11, control=[{"type": "canny", "scale": 1.0}])
    styled = _run(client, image, prompt="an astronaut", seed=11, loras=[{"name": "tiny-style", "weight": 0.8}])
    assert np.abs(_result(client, canny).astype(int) - plain).mean() > 2
    assert np.abs(_result(client, styled).astype(int) - plain).mean() > 2

    assert canny["params"]["model"] == "tiny"  # the default, recorded by its library name
    assert canny["params"]["control"] == [{"type": "canny", "scale": 1.0, "start": 0.0, "end": 1.0, "model": "canny"}]
    assert styled["params"]["loras"] == [{"name": "tiny-style", "weight": 0.8}]
    edges = client.get(canny["links"]["controls"]["canny"])
    assert edges.status_code == 200 and edges.mimetype == "image/png"
    assert decode_png(edges.data).shape == (64, 64, 3)
    assert canny["stages"]["encode"]["cache"]["control"] == {"canny": "computed"}
    page = client.get(f"/jobs/{canny['id']}").get_data(as_text=True)
    assert "ControlNet <strong>canny</strong> (canny)" in page and 'data-control="canny"' in page
    assert "LoRA <strong>tiny-style</strong> ×0.8" in client.get(f"/jobs/{styled['id']}").get_data(as_text=True)
    assert client.get(f"/api/v1/jobs/{styled['id']}/control/canny").status_code == 404

    both = {"prompt": "an astronaut", "seed": 11, "control": [{"type": "canny"}, {"type": "tile", "scale": 0.5}],
            "loras": [{"name": "tiny-style", "weight": 0.8}]}
    # Each run from an empty cache: no stored result, latent or map — and no near-duplicate's latent
    # (another test's astronaut, resized otherwise, may lend its latent to a run: a different start).
    runs = []
    for _ in range(2):
        assert client.delete("/api/v1/cache").status_code == 200
        runs.append(_run(client, image, **both))
        assert runs[-1]["stages"]["generate"]["cached"] is False and runs[-1]["stages"]["encode"]["cached"] is False
    first, second = runs
    assert np.array_equal(_result(client, first), _result(client, second))


def test_batched_control_and_lora_jobs_give_each_the_image_it_gets_alone(app, client, workers, library) -> None:
    wanted = {"control": [{"type": "canny"}], "loras": [{"name": "tiny-style", "weight": 0.7}], "steps": 8}
    images = [encode(photo(name, size=80)) for name in ("coffee", "chelsea", "rocket")]

    def submit(i: int) -> str:
        with app.test_client() as c:
            response = _submit(c, images[i], prompt=f"picture {i}", seed=200 + i, **wanted)
        assert response.status_code == 202, response.get_json()
        return response.get_json()["id"]

    with ThreadPoolExecutor(3) as pool:
        ids = list(pool.map(submit, range(3)))
    jobs = [wait_for_job(lambda i: client.get(f"/api/v1/jobs/{i}").get_json(), job_id, timeout_s=180) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 3, jobs
    sizes = [j["stages"]["generate"]["cache"]["batch_size"] for j in jobs]
    assert max(sizes) >= 2, f"no generate call was shared: batch sizes {sizes}"

    rt = WorkerRuntime(app.extensions["pixelmill"].settings)  # the engine as a worker loads it
    for job_id in ids:
        record = rt.store.fetch(job_id)
        params = generate_params(rt.settings, record.job_params)
        engine = rt.diffusion(record.job_params.model).engine
        maps = [decode_png(rt.blobs.fetch(record.outputs[CONTROL_OUTPUT.format(type=c.type)])) for c in params.controls]
        with torch.inference_mode():
            latents = engine.encode(decode_png(rt.blobs.fetch(record.outputs["normalized"])))
            alone = engine.generate(latents, params, control_images=maps)
        served = decode_png(rt.blobs.fetch(record.outputs["generated"]))
        assert np.abs(served.astype(int) - alone.astype(int)).max() <= 2, f"job {job_id} differs from its run alone"


def test_a_single_file_checkpoint_and_depth_control_run(client, workers, library) -> None:
    image = encode(photo("chelsea", size=64))
    folder = _run(client, image, prompt="a cat", seed=5)
    single = _run(client, image, prompt="a cat", seed=5, model="tiny-single")
    assert single["params"]["model"] == "tiny-single"
    # the same weights in another layout (loaded into other memory: float rounding only)
    assert np.abs(_result(client, single).astype(int) - _result(client, folder)).max() <= 2
    depth = _run(client, image, prompt="a cat", seed=5, control=[{"type": "depth", "end": 0.6}])
    assert depth["params"]["control"][0]["model"] == "depth"
    depth_map = decode_png(client.get(depth["links"]["controls"]["depth"]).data)
    assert depth_map.shape == _result(client, depth).shape and depth_map.max() == 255  # chelsea is 3:2


def test_a_repeated_prompt_hits_the_prompt_cache(client, workers, library) -> None:
    prompt = f"a lighthouse {uuid.uuid4().hex[:8]}"
    image = encode(photo("rocket", size=64))
    first = _run(client, image, prompt=prompt, seed=1)
    second = _run(client, image, prompt=prompt, seed=2)  # another seed: generated again, not a stored result
    assert first["stages"]["generate"]["cache"]["prompt"] == "computed"
    assert second["stages"]["generate"]["cache"]["prompt"] in ("hot", "redis")
    assert "prompt cache hit" in second["stages"]["generate"]["cache_label"]
    other = _run(client, image, prompt=prompt, seed=3, clip_skip=1)  # another clip_skip: its own entry
    assert other["stages"]["generate"]["cache"]["prompt"] == "computed"
    cache = client.get("/api/v1/cache").get_json()
    assert cache["entries"]["prompt"] >= 2
    assert cache["stats"]["stages"]["prompt"]["lookup"]["hits"] >= 1
    page = client.get(f"/jobs/{second['id']}").get_data(as_text=True)
    assert "prompt cache hit" in page


@pytest.mark.parametrize(("params", "code", "fragment"), [
    ({"model": "sd-xl-turbo"}, "unknown_model", "'tiny'"),
    ({"loras": [{"name": "nope"}]}, "unknown_lora", "'tiny-style'"),
    ({"control": [{"type": "canny", "model": "nope"}]}, "unknown_controlnet", "'canny'"),
    ({"loras": [{"name": "tiny-style", "weight": 3}]}, "invalid_parameters", "less than or equal to 2"),
    ({"control": [{"type": "canny", "scale": -1}]}, "invalid_parameters", "greater than or equal to 0"),
    ({"control": [{"type": "pose"}]}, "invalid_parameters", "'canny', 'tile' or 'depth'"),
    ({"loras": [{"name": "other-base"}]}, "lora_incompatible", "made for a ca48 model"),
    ({"model": "pickled"}, "model_unusable", "pickle"),
])
def test_bad_models_answer_422_with_the_choices_or_the_reason(client, library, params, code, fragment) -> None:
    response = _submit(client, encode(photo("coffee", size=64)), prompt="x", **params)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == code and fragment in error["message"], error


def test_the_library_is_listed_and_offered_by_the_form(client, workers, library) -> None:
    listing = client.get("/api/v1/models").get_json()
    by_name = {(m["kind"], m["name"]): m for m in listing["models"]}
    assert listing["default"] == "tiny" and by_name[("checkpoint", "tiny")]["default"] is True
    assert by_name[("checkpoint", "pickled")]["usable"] is False
    assert by_name[("lora", "tiny-style")]["base"] == by_name[("checkpoint", "tiny")]["base"] == "ca32"
    assert {"canny", "tile", "depth"} <= {m["control_type"] for m in listing["models"] if m["kind"] == "controlnet"}
    form = client.get("/").get_data(as_text=True)
    assert '<option value="tiny-single">' in form and '<option value="canny">canny</option>' in form
    assert '<option value="pickled">' not in form and '<option value="tiny-style">' in form
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    form_job = client.post("/submit", data={"csrf_token": csrf, "_form": "1", "engine": "diffusion",
                                            "model": "tiny-single",
                                            "control": "tile", "loras": "tiny-style:0.5", "steps": "4",
                                            "strength": "0.75", "size": "64",
                                            "images": (io.BytesIO(encode(photo("coffee", size=64))), "c.png")},
                           content_type="multipart/form-data")
    assert form_job.status_code == 303, form_job.get_data(as_text=True)[:500]
    job_id = form_job.headers["Location"].rsplit("/", 1)[1]
    job = wait_for_job(lambda i: client.get(f"/api/v1/jobs/{i}").get_json(), job_id, timeout_s=180)
    assert job["status"] == "succeeded", job
    assert job["params"]["model"] == "tiny-single" and job["params"]["loras"] == [{"name": "tiny-style", "weight": 0.5}]
    assert [c["model"] for c in job["params"]["control"]] == ["tile"]
