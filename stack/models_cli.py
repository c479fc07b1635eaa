"""``pixelmill models list | add | pull``: the model library (PIXELMILL_MODELS_DIR) from the command line.

``add`` copies (or links) a checkpoint folder or single file, a LoRA, a ControlNet or a depth
model into the library after checking it as a job would (safetensors only, a known layout);
``pull`` downloads a hub snapshot (safetensors and configs only, with a progress bar) and adds it.
Torch-free: models are checked from their configs and safetensors headers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from workers.library import (FOLDERS, KINDS, Library, ModelEntry, inspect_clip, inspect_controlnet, inspect_depth,
                             inspect_face, inspect_lora)
from workers.safetensors_header import HeaderError, read_header

PULL_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model"]  # never .bin/.ckpt/.pt: pickles run code
CONFIG_PATTERNS = ["*.json", "*.txt", "*.model"]
ADDABLE = ("checkpoint", "lora", "controlnet", "depth", "face", "clip")


class ModelsError(Exception):
    """What went wrong, in words the user can act on (printed, exit status 1)."""


def add_arguments(models_sub: argparse._SubParsersAction) -> None:
    listing = models_sub.add_parser("list", help="what the library holds: name, kind, base, size, usable or why not")
    listing.add_argument("--json", action="store_true", help="as GET /api/v1/models answers")
    add = models_sub.add_parser("add", help="copy (or --link) a model into the library, checking it first")
    add.add_argument("path", type=Path, help="a diffusers folder, a single-file .safetensors checkpoint, a LoRA, "
                                             "a ControlNet folder or a depth-model folder")
    _common(add)
    add.add_argument("--link", action="store_true", help="link to it instead of copying (it must stay where it is)")
    pull = models_sub.add_parser("pull", help="download a hub snapshot (safetensors and configs only) into the library")
    pull.add_argument("repo_id", help="e.g. depth-anything/Depth-Anything-V2-Small-hf")
    _common(pull)
    pull.add_argument("--revision", help="a branch, tag or commit of the hub repository")
    pull.add_argument("--config-only", action="store_true",
                      help="only the configs (no weights), into configs/<name>: what single-file checkpoints of "
                           "that base load with offline")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="its name in the library (default: the file or folder name)")
    parser.add_argument("--kind", choices=ADDABLE, help="default: told from its files")


def _library() -> Library:
    from tasks.settings import get_settings

    return Library(get_settings().models_dir)


def run(args: argparse.Namespace) -> int:
    try:
        return {"list": models_list, "add": models_add, "pull": models_pull}[args.models_command](args)
    except ModelsError as e:
        print(f"pixelmill: {e}", file=sys.stderr)
        return 1


# --- list ----------------------------------------------------------------------------------------------

def models_list(args: argparse.Namespace) -> int:
    from tasks.settings import get_settings
    from web.models_api import model_list

    listing = model_list(get_settings())
    if args.json:
        print(json.dumps(listing.model_dump(mode="json"), indent=2))
        return 0
    print(f"library: {_library().root}   default model: {listing.default or '(none)'}")
    if not listing.models:
        print("(empty: `pixelmill models add PATH`, `pixelmill models pull REPO` or `pixelmill tiny-model`)")
    for m in listing.models:
        status = "ok" if m.usable else f"NOT USABLE: {m.problem}"
        extra = (f" ({m.control_type})" if m.control_type else " (+text encoder)" if m.text_encoder
                 else f" ({m.role})" if m.role else "")
        mark = "*" if m.default else " "
        print(f"{mark} {m.kind:10} {m.name:32} {m.base or '-':6} {m.format:12} {_size(m.size_bytes):>9}  "
              f"{status}{extra}")
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# --- add -----------------------------------------------------------------------------------------------

def detect_kind(path: Path) -> str:
    """What a folder or file is, from its configs and safetensors header."""
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return "checkpoint"
        config = _json(path / "config.json")
        if config.get("_class_name") == "ControlNetModel":
            return "controlnet"
        if config.get("model_type") == "clip":
            return "clip"
        if config.get("model_type"):
            return "depth"
        if any(path.glob("*.safetensors")):
            return "lora"
        if any(path.glob("*.bin")) or any(path.glob("*.ckpt")):
            raise ModelsError(f"{path} holds only pickle weights (.bin/.ckpt), which can run code when loaded: "
                              "convert them to .safetensors first")
        raise ModelsError(f"{path} is no model folder this library knows: no model_index.json (a diffusers "
                          "checkpoint), no config.json (a ControlNet or depth model), no .safetensors (a LoRA)")
    if path.suffix == ".onnx":
        return "face"  # the only ONNX models of the library: face restorers and detectors
    if path.suffix != ".safetensors":
        raise ModelsError(f"{path.name}: only .safetensors files (and .onnx face models) are taken (a "
                          f"{path.suffix or 'file without a suffix'} "
                          "may be a pickle, which can run code when loaded)")
    try:
        keys = read_header(path).keys()
    except HeaderError as e:
        raise ModelsError(str(e)) from e
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "checkpoint"
    if any(k.startswith(("control_model.", "input_hint_block.", "controlnet_")) for k in keys):
        return "controlnet"
    if any("lora" in k.lower() for k in keys):
        return "lora"
    raise ModelsError(f"{path.name} is no checkpoint, LoRA or ControlNet (its tensors are none of their layouts)")


def inspect(library: Library, path: Path, kind: str) -> ModelEntry:
    entry = {"checkpoint": lambda: library.inspect_checkpoint(path),
             "lora": lambda: inspect_lora(path),
             "controlnet": lambda: inspect_controlnet(path),
             "depth": lambda: inspect_depth(path),
             "face": lambda: inspect_face(path),
             "clip": lambda: inspect_clip(path)}[kind]()
    if entry is None:
        raise ModelsError(f"{path} is not a {kind} this library can read")
    return entry


def models_add(args: argparse.Namespace) -> int:
    entry = add(_library(), args.path, name=args.name, kind=args.kind, link=args.link)
    print(f"added {entry.kind} {entry.name!r} ({entry.base or 'no base'}, {_size(entry.size_bytes)}) at {entry.path}")
    return 0


def add(library: Library, source: Path, *, name: str | None = None, kind: str | None = None,
        link: bool = False, move: bool = False) -> ModelEntry:
    """Check ``source`` as the library would serve it, then copy, link or move it in."""
    source = source.expanduser().resolve()
    if not source.exists():
        raise ModelsError(f"{source} does not exist")
    kind = kind or detect_kind(source)
    entry = inspect(library, source, kind)
    if entry.problem:
        raise ModelsError(f"{source.name} cannot be used as a {kind}: {entry.problem}")
    target = destination(library, source, kind=kind, name=name)
    if target.exists() or target.is_symlink():
        raise ModelsError(f"the library already has {target}; pick another --name or remove it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        target.symlink_to(source, target_is_directory=source.is_dir())
    elif move:  # a download of ours, already in the library's folder: a rename
        shutil.move(str(source), target)
    else:  # copied under a hidden name (the library skips it), then renamed: never seen half-copied
        partial = target.with_name(f".partial-{target.name}")
        shutil.rmtree(partial, ignore_errors=True)
        if source.is_dir():
            shutil.copytree(source, partial)
        else:
            shutil.copy2(source, partial)
        partial.rename(target)
    added = library.find(target.stem if target.is_file() else target.name, kind=kind)
    if added is None:
        raise ModelsError(f"{target} was added but the library does not list it; check its layout")
    return added


def destination(library: Library, source: Path, *, kind: str, name: str | None) -> Path:
    folder = FOLDERS[kind][0]
    base = library.root / folder if folder else library.root
    if name and ("/" in name or name.startswith(".") or "\\" in name):
        raise ModelsError(f"a model name cannot contain slashes or start with a dot: {name!r}")
    stem = name or (source.stem if source.is_file() else source.name)
    return base / (f"{stem}{source.suffix}" if source.is_file() else stem)


# --- pull ----------------------------------------------------------------------------------------------

def models_pull(args: argparse.Namespace) -> int:
    library = _library()
    name = args.name or args.repo_id.rstrip("/").split("/")[-1]
    if args.config_only:
        target = library.root / "configs" / name
        snapshot(args.repo_id, target, revision=args.revision, patterns=CONFIG_PATTERNS)
        print(f"configs of {args.repo_id} saved to {target} (single-file checkpoints of that base load with them)")
        return 0
    partial = library.root / f".partial-{name}"
    snapshot(args.repo_id, partial, revision=args.revision, patterns=PULL_PATTERNS)
    try:
        entry = add(library, partial, name=name, kind=args.kind, move=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"pulled {args.repo_id} as {entry.kind} {entry.name!r} ({entry.base or 'no base'}, "
          f"{_size(entry.size_bytes)})")
    return 0


def snapshot(repo_id: str, target: Path, *, revision: str | None, patterns: list[str]) -> Path:
    """A hub snapshot's files matching ``patterns`` in ``target``, with a progress bar; ModelsError
    when the hub cannot be reached (offline, no network) or has no such repository."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    from tqdm.auto import tqdm

    offline_help = (f"download it on a machine that can reach huggingface.co (`huggingface-cli download {repo_id}` "
                    "or `pixelmill models pull` there), copy the folder here and `pixelmill models add` it")
    if constants.HF_HUB_OFFLINE:
        raise ModelsError(f"cannot pull {repo_id}: HF_HUB_OFFLINE is set, so the hub is not reached. Unset it, or "
                          f"{offline_help}")
    target.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(repo_id, revision=revision, local_dir=target, allow_patterns=patterns, tqdm_class=tqdm,
                          etag_timeout=15)
    except RepositoryNotFoundError as e:
        raise ModelsError(f"the hub has no repository {repo_id!r} (or it is gated: log in with "
                          "`huggingface-cli login` and accept its licence first)") from e
    except LocalEntryNotFoundError as e:
        raise ModelsError(f"cannot pull {repo_id}: the hub could not be reached from this machine. "
                          f"{offline_help[0].upper()}{offline_help[1:]}") from e
    except (HfHubHTTPError, OSError) as e:
        raise ModelsError(f"cannot pull {repo_id}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return target


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


__all__ = ["KINDS", "ModelsError", "add", "add_arguments", "detect_kind", "run", "snapshot"]
