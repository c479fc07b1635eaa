"""Small hardening points without a broker: the outbound guard's port 0, webhook URL normalisation,
bounded upload decoding, safetensors-only model loading, .env kept out of git, and the CLI's resume
state kept inside --out."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from client.state import STATE_NAME, StateError, SubmitState
from safety.outbound import OutboundRefused, check_url
from tasks.blobs import BlobStore
from tasks.settings import Settings
from tasks.webhooks.models import normalise_url

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = ["93.184.216.34"]


# --- 9: port 0 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["http://hooks.example:0/in", "https://hooks.example:00/in", "http://93.184.216.34:0/"])
def test_port_0_is_refused(url):
    """It never fired: `parts.port or default` turned an explicit :0 (falsy) into 80/443."""
    with pytest.raises(OutboundRefused, match="port 0 cannot be called"):
        check_url(url, allow_private=False, resolve=lambda host, port: PUBLIC)


def test_no_port_is_still_the_default_one():
    assert check_url("https://hooks.example/in", allow_private=False, resolve=lambda h, p: PUBLIC).port == 443
    assert check_url("http://hooks.example:/in", allow_private=False, resolve=lambda h, p: PUBLIC).port == 80


# --- 7: webhook URLs, one spelling each ----------------------------------------------------------

@pytest.mark.parametrize(("url", "normal"), [
    ("https://EXAMPLE.com:443/x#y", "https://example.com/x"),
    ("https://example.com/x", "https://example.com/x"),
    ("HTTP://Example.COM", "http://example.com/"),
    ("http://example.com:80?a=B#frag", "http://example.com/?a=B"),
    ("http://example.com:8080/A/b?Q=1", "http://example.com:8080/A/b?Q=1"),  # path and query as written
    ("https://example.com:80/x", "https://example.com:80/x"),  # not https' default port
    ("http://[2001:DB8::1]:80/", "http://[2001:db8::1]/"),
])
def test_webhook_urls_are_normalised(url, normal):
    assert normalise_url(url) == normal


# --- 7: bounded decoding ---------------------------------------------------------------------------

def test_uploads_are_decoded_a_few_at_a_time(monkeypatch, tmp_path):
    """Many request threads validating at once hold at most decode_concurrency decodes."""
    import tasks.submit as submit
    from safety.validate import CleanImage  # noqa: F401 — the real type is not needed, only .png

    running, peak, lock = 0, 0, threading.Lock()

    def slow_validate(data, *, limits):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return SimpleNamespace(png=data)

    monkeypatch.setattr(submit, "validate_image", slow_validate)
    rt = SimpleNamespace(settings=Settings(decode_concurrency=2), blobs=BlobStore(tmp_path))
    threads = [threading.Thread(target=submit._prepare,
                                kwargs={"rt": rt, "tenant": "t", "params": submit.JobParams(),
                                        "upload": submit.Upload(name=f"{i}.png", data=b"%d" % i)})
               for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2


def test_the_batch_cap_fits_the_cli_batch_size():
    """`pixelmill submit` sends --batch-size (default 100) files per request."""
    from client.submit import SubmitOptions

    assert Settings().max_batch_files >= SubmitOptions(url="", params={}, out=Path(".")).batch_size


# --- 9: safetensors only -----------------------------------------------------------------------------

def test_a_model_folder_with_only_bin_weights_is_refused(tmp_path):
    pytest.importorskip("diffusers")
    from workers.diffusion import DiffusionEngine
    from workers.errors import ModelLoadError
    from workers.tiny_model import _build_text_encoder, _build_unet, _build_vae, random_img2img_pipeline

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    random_img2img_pipeline(vae=_build_vae, text_encoder=_build_text_encoder,
                            unet=_build_unet).save_pretrained(folder, safe_serialization=False)
    for weights in folder.rglob("*.safetensors"):  # transformers writes safetensors regardless: pickle them too
        torch.save(load_file(weights), weights.with_name("pytorch_model.bin"))
        weights.unlink()
    assert len(list(folder.rglob("*.bin"))) == 3 and not list(folder.rglob("*.safetensors"))
    with pytest.raises(ModelLoadError, match="no safetensors weights.*safe_serialization=True"):
        DiffusionEngine.load(str(folder))


# --- 9: .env --------------------------------------------------------------------------------------------

def test_dot_env_is_ignored_by_git_but_its_example_is_not():
    def ignored(name: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=ROOT).returncode == 0

    assert ignored(".env") and ignored(".env.production")
    assert not ignored(".env.example")


# --- 9: the resume state stays inside --out ------------------------------------------------------------

def _state_with(out: Path, target: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    entry = {"source": "a.jpg", "sha256": "0" * 64, "target": target}
    (out / STATE_NAME).write_text(json.dumps({"version": 1, "url": "", "params": {}, "entries": {"k": entry}}))


@pytest.mark.parametrize("target", ["../outside", "a/../../outside", "/etc/cron.d/x", "", "sub/link/x"])
def test_a_resume_state_pointing_outside_out_is_refused(tmp_path, target):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "link").symlink_to(tmp_path)  # a folder link inside --out that leads out of it
    _state_with(out, target)
    with pytest.raises(StateError, match="delete it to start over"):
        SubmitState.load(out, params={})


def test_a_resume_state_inside_out_loads(tmp_path):
    out = tmp_path / "out"
    _state_with(out, "album/photo")
    assert SubmitState.load(out, params={}).entries["k"].target == "album/photo"
