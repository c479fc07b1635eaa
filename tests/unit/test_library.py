"""The model library (workers/library.py) and what a job may name (tasks/models.py): listing from
configs and safetensors headers alone, pickle-only and config-less models refused with the reason,
LoRAs for another base caught from their shapes, unknown names answered with the choices."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from tasks.jobs import JobParams  # noqa: E402
from tasks.models import ModelRefused, check_params, resolve_model  # noqa: E402
from tasks.settings import Settings  # noqa: E402
from workers.library import Library  # noqa: E402
from workers.safetensors_header import HeaderError, read_header  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DIFFUSION = {"engine": "diffusion", "steps": 4, "strength": 0.5}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny library, plus a LoRA made for another base and a checkpoint folder with only .bin weights."""
    from workers.tiny_model import build_tiny_library, build_tiny_lora

    root = build_tiny_library(tmp_path_factory.mktemp("models"))
    build_tiny_lora(root / "loras" / "other-base.safetensors", cross_attention_dim=48, text_encoder=False)
    pickled = root / "pickled"
    shutil.copytree(root / "tiny", pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    for part in ("unet", "vae"):
        (pickled / part / "diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")
    (pickled / "text_encoder" / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return root


def settings_for(library: Path, **changes) -> Settings:
    return Settings(models_dir=library, diffusion_model=str(library / "tiny"), **changes)


def test_the_library_lists_every_kind_with_its_base_and_size(library: Path) -> None:
    entries = {(e.kind, e.name): e for e in Library(library).entries()}
    assert {key for key in entries} >= {("checkpoint", "tiny"), ("checkpoint", "tiny-single"), ("lora", "tiny-style"),
                                        ("controlnet", "canny"), ("controlnet", "tile"), ("controlnet", "depth"),
                                        ("depth", "tiny-depth"), ("checkpoint", "pickled"), ("lora", "other-base")}
    assert ("checkpoint", "configs") not in entries and ("checkpoint", "loras") not in entries
    tiny = entries[("checkpoint", "tiny")]
    assert (tiny.format, tiny.base, tiny.cross_attention_dim, tiny.text_layers) == ("diffusers", "ca32", 32, 5)
    assert tiny.size_bytes > 1_000_000 and tiny.is_usable
    single = entries[("checkpoint", "tiny-single")]
    assert (single.format, single.base, single.config) == ("single_file", "ca32", library / "configs" / "ca32")
    assert entries[("lora", "tiny-style")].text_encoder and entries[("lora", "tiny-style")].base == "ca32"
    assert entries[("lora", "other-base")].base == "ca48"
    assert entries[("controlnet", "tile")].control_type == "tile"


def test_pickle_only_weights_and_config_less_single_files_are_refused_with_the_reason(library: Path,
                                                                                      tmp_path: Path) -> None:
    pickled = Library(library).find("pickled", kind="checkpoint")
    assert not pickled.is_usable and "pickle" in pickled.problem and ".safetensors" in pickled.problem
    with pytest.raises(ModelRefused, match="pickle") as refused:
        check_params(settings_for(library), JobParams(**DIFFUSION, model="pickled"))
    assert refused.value.status == 422

    alone = tmp_path / "lib"
    alone.mkdir()
    shutil.copy(library / "tiny-single.safetensors", alone / "mine.safetensors")
    entry = Library(alone).find("mine", kind="checkpoint")
    assert "configs/ca32/" in entry.problem and "--config-only" in entry.problem  # how to fix it, offline
    shutil.copytree(library / "configs" / "ca32", alone / "mine.config")  # a config folder beside the file
    assert Library(alone).find("mine", kind="checkpoint").is_usable


def test_unknown_names_answer_422_with_the_choices(library: Path) -> None:
    s = settings_for(library)
    with pytest.raises(ModelRefused, match="'tiny', 'tiny-single'") as unknown:
        check_params(s, JobParams(**DIFFUSION, model="sd-xl-turbo"))
    assert (unknown.value.status, unknown.value.code) == (422, "unknown_model")
    with pytest.raises(ModelRefused, match="unknown LoRA 'nope'.*'tiny-style'"):
        check_params(s, JobParams(**DIFFUSION, loras=[{"name": "nope"}]))
    with pytest.raises(ModelRefused, match="unknown ControlNet 'nope'"):
        check_params(s, JobParams(**DIFFUSION, control=[{"type": "canny", "model": "nope"}]))
    empty = Settings(models_dir=library / "empty", diffusion_model=str(library / "tiny"))  # the default only
    with pytest.raises(ModelRefused, match="no ControlNet for 'tile'"):
        check_params(empty, JobParams(**DIFFUSION, control=[{"type": "tile"}]))
    with pytest.raises(ModelRefused, match="is not in the library"):
        check_params(settings_for(library, controlnets={"tile": "tile-v2"}), JobParams(**DIFFUSION, control="tile"))


def test_a_lora_made_for_another_base_is_refused_at_submit(library: Path) -> None:
    lib = Library(library)
    reason = lib.lora_conflict(lib.find("other-base", kind="lora"), lib.find("tiny", kind="checkpoint"))
    assert "cross-attention width 48" in reason and "'tiny' is ca32" in reason
    assert lib.lora_conflict(lib.find("tiny-style", kind="lora"), lib.find("tiny", kind="checkpoint")) is None
    assert lib.lora_conflict(lib.find("tiny-style", kind="lora"), lib.find("tiny-single", kind="checkpoint")) is None
    with pytest.raises(ModelRefused, match="made for a ca48 model") as refused:
        check_params(settings_for(library), JobParams(**DIFFUSION, loras=[{"name": "other-base", "weight": 0.5}]))
    assert refused.value.code == "lora_incompatible"


def test_a_lora_whose_layers_do_not_fit_is_caught_by_shape(library: Path, tmp_path: Path) -> None:
    """Same cross-attention width, other layer widths: the per-layer shapes give it away."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(library / "loras" / "tiny-style.safetensors"))
    for key in list(tensors):
        if key.startswith("unet.") and "attn1.to_q" in key and "down" in key:
            tensors[key] = tensors[key][:, :16].copy()  # a LoRA for a UNet of other channel widths
    root = tmp_path / "lib"
    shutil.copytree(library / "tiny", root / "tiny")
    (root / "loras").mkdir()
    save_file(tensors, str(root / "loras" / "narrow.safetensors"))
    lib = Library(root)
    reason = lib.lora_conflict(lib.find("narrow", kind="lora"), lib.find("tiny", kind="checkpoint"))
    assert reason and "attn1.to_q" in reason and "another base" in reason


def test_submit_records_the_model_and_controlnets_it_resolved(library: Path) -> None:
    s = settings_for(library)
    checked = check_params(s, JobParams(**DIFFUSION, control="canny:0.7,tile", loras="tiny-style:0.5"))
    assert checked.model == "tiny"  # the default, given as a path inside the library, is recorded by name
    assert [(c.type, c.model, c.scale) for c in checked.control] == [("canny", "canny", 0.7), ("tile", "tile", 1.0)]
    assert [(lora.name, lora.weight) for lora in checked.loras] == [("tiny-style", 0.5)]
    mapped = check_params(settings_for(library, controlnets={"canny": "tile"}), JobParams(**DIFFUSION, control="canny"))
    assert mapped.control[0].model == "tile"  # PIXELMILL_CONTROLNETS maps a type to a ControlNet by name
    style = check_params(s, JobParams(engine="style", loras="nope", model="nope"))
    assert style.model is None and style.loras == []  # a style job ignores the diffusion-only fields
    choice = resolve_model(s, "tiny-single")
    assert (choice.format, choice.config) == ("single_file", str(library / "configs" / "ca32"))


def test_bad_values_are_validation_errors(library: Path) -> None:
    for bad in ({"loras": [{"name": "tiny-style", "weight": 2.5}]}, {"control": [{"type": "canny", "scale": 3}]},
                {"control": [{"type": "pose"}]}, {"control": [{"type": "canny", "start": 0.8, "end": 0.2}]},
                {"control": "canny,canny"}, {"clip_skip": 12}, {"loras": "a,b,c,d,e,f"}):
        with pytest.raises(ValidationError):
            JobParams(**DIFFUSION, **bad)
    with pytest.raises(ModelRefused, match="at most 4"):  # the tiny text encoder has 5 layers
        check_params(settings_for(library), JobParams(**DIFFUSION, clip_skip=5))


def test_depth_control_needs_a_depth_model(library: Path, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    shutil.copytree(library / "tiny", root / "tiny")
    shutil.copytree(library / "controlnets", root / "controlnets")
    s = Settings(models_dir=root, diffusion_model="tiny")
    with pytest.raises(ModelRefused, match="depth model") as refused:
        check_params(s, JobParams(**DIFFUSION, control="depth"))
    assert refused.value.code == "depth_unavailable"
    assert check_params(s, JobParams(**DIFFUSION, control="canny")).control[0].model == "canny"


def test_the_safetensors_header_is_read_without_torch(library: Path, tmp_path: Path) -> None:
    header = read_header(library / "loras" / "tiny-style.safetensors")
    assert header.shapes and all(isinstance(s, tuple) for s in header.shapes.values())
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(HeaderError, match="not a .safetensors"):
        read_header(bogus)
    bogus.write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(HeaderError, match="not JSON"):
        read_header(bogus)
    probe = ("import sys, tasks.models, workers.library, stack.models_cli; "
             f"lib = workers.library.Library({str(library)!r}); lib.entries(); "
             "print([m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_pixelmill_models_add_checks_and_copies_and_list_shows_it(library: Path, tmp_path: Path) -> None:
    from stack.models_cli import ModelsError, add, detect_kind

    root = tmp_path / "lib"
    lib = Library(root)
    assert detect_kind(library / "tiny") == detect_kind(library / "tiny-single.safetensors") == "checkpoint"
    assert detect_kind(library / "controlnets" / "canny") == "controlnet"
    assert detect_kind(library / "depth" / "tiny-depth") == "depth"
    assert detect_kind(library / "loras" / "tiny-style.safetensors") == "lora"
    entry = add(lib, library / "loras" / "tiny-style.safetensors", name="style2")
    assert entry.path == root / "loras" / "style2.safetensors" and entry.kind == "lora"
    add(lib, library / "controlnets" / "canny", link=True)
    assert (root / "controlnets" / "canny").is_symlink() and lib.find("canny", kind="controlnet").is_usable
    with pytest.raises(ModelsError, match="pickle"):
        add(lib, library / "pickled")
    with pytest.raises(ModelsError, match="already has"):
        add(lib, library / "loras" / "tiny-style.safetensors", name="style2")
    with pytest.raises(ModelsError, match="slashes"):
        add(lib, library / "tiny", name="../escape")
    download = root / ".partial-depth-small"  # where `models pull` downloads, inside the library (hidden)
    shutil.copytree(library / "depth" / "tiny-depth", download)
    assert lib.find(".partial-depth-small", kind="checkpoint") is None
    moved = add(lib, download, name="depth-small", move=True)
    assert moved.path == root / "depth" / "depth-small" and moved.is_usable and not download.exists()
    env = {**os.environ, "PIXELMILL_MODELS_DIR": str(root)}
    out = subprocess.run([sys.executable, "-m", "stack.cli", "models", "list", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    names = {(m["kind"], m["name"]) for m in json.loads(out.stdout)["models"]}
    assert {("lora", "style2"), ("controlnet", "canny")} <= names


def test_pixelmill_models_pull_says_clearly_that_the_hub_is_out_of_reach(tmp_path: Path) -> None:
    env = {**os.environ, "PIXELMILL_MODELS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    pull = [sys.executable, "-m", "stack.cli", "models", "pull", "depth-anything/Depth-Anything-V2-Small-hf"]
    out = subprocess.run(pull, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "HF_HUB_OFFLINE" in out.stderr and "pixelmill models add" in out.stderr
    assert "Traceback" not in out.stderr
    env["HF_HUB_OFFLINE"] = "0"  # online as far as the hub client knows, but this machine has no network
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: fails at once, as with no network
    out = subprocess.run([sys.executable, "-m", "stack.cli", "models", "pull", "some/repo", "--config-only"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout
    assert "could not be reached" in out.stderr and "Traceback" not in out.stderr
