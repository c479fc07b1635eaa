"""The model library as jobs see it: which checkpoint, LoRAs and ControlNets a job names, checked
at submit (422 with the choices or the reason, so a worker never meets a bad name), and resolved
to files where a worker loads them. Torch-free: the web app runs it (workers.library reads config
files and safetensors headers only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.errors import PixelmillError
from tasks.jobs import Control, JobParams, Lora
from tasks.settings import Settings
from workers.library import Library, ModelEntry, lora_file


class ModelRefused(PixelmillError):
    """A job names a model, LoRA or ControlNet the library cannot serve for it (422)."""

    code = "invalid_model"
    status = 422


@dataclass(frozen=True)
class ModelChoice:
    """A checkpoint a job runs on: a library entry, or the default given as a path or hub id."""

    name: str                  # what the job records and the batch and cache keys carry
    source: str                # what the engine loads: a folder, a .safetensors file or a hub id
    format: str                # diffusers | single_file | hub
    revision: str | None       # the library's fingerprint of its files, or the hub revision
    config: str | None = None  # single files: the diffusers configs they load with
    entry: ModelEntry | None = None


@dataclass(frozen=True)
class LoraChoice:
    name: str
    path: str            # the .safetensors file
    weight: float
    fingerprint: str
    text_encoder: bool   # also adapts the text encoder (then it is part of the prompt-cache key)


@dataclass(frozen=True)
class ControlChoice:
    type: str
    name: str            # the ControlNet
    path: str
    fingerprint: str
    scale: float
    start: float
    end: float


def library(settings: Settings) -> Library:
    return Library(settings.models_dir)


# --- the checkpoint ----------------------------------------------------------------------------------

def resolve_model(settings: Settings, name: str | None = None) -> ModelChoice:
    """The checkpoint ``name`` means (None: the default, PIXELMILL_DIFFUSION_MODEL); ModelRefused
    when there is none, or it cannot be used."""
    lib = library(settings)
    default = settings.diffusion_model
    wanted = name or default
    if not wanted:
        raise ModelRefused("diffusion is not enabled on this server: name a model of the library "
                           f"({_choices(lib)}), or the operator sets PIXELMILL_DIFFUSION_MODEL",
                           code="diffusion_disabled")
    entry = lib.find(wanted, kind="checkpoint")
    if entry is None and wanted == default:
        entry = lib.entry_at(default) if _looks_like_path(default) else None
        if entry is None:
            return _external(lib, default, settings)
    if entry is None:
        raise ModelRefused(f"unknown model {wanted!r}: choose one of {_choices(lib)} (GET /api/v1/models)",
                           code="unknown_model")
    return _from_entry(entry)


def _external(lib: Library, default: str, settings: Settings) -> ModelChoice:
    """The default model given as a folder, a file or a hub id outside the library."""
    if not _looks_like_path(default):
        return ModelChoice(name=default, source=default, format="hub", revision=settings.diffusion_revision)
    entry = lib.inspect_checkpoint(default)
    if entry is None:  # neither a folder nor a checkpoint file: let the engine say why it cannot load it
        return ModelChoice(name=default, source=default, format="diffusers", revision=settings.diffusion_revision)
    choice = _from_entry(entry)
    return ModelChoice(name=default, source=choice.source, format=choice.format, revision=choice.revision,
                       config=choice.config, entry=entry)


def _from_entry(entry: ModelEntry) -> ModelChoice:
    if entry.problem:
        raise ModelRefused(f"model {entry.name!r} cannot be used: {entry.problem}", code="model_unusable")
    return ModelChoice(name=entry.name, source=str(entry.path), format=entry.format, revision=entry.fingerprint,
                       config=str(entry.config) if entry.config else None, entry=entry)


def _looks_like_path(value: str) -> bool:
    if value.startswith(("/", ".", "~")):
        return True
    try:
        return Path(value).exists()
    except (OSError, ValueError):  # too long, a NUL byte: a hub id, then, or nothing
        return False


def _choices(lib: Library, kind: str = "checkpoint") -> str:
    names = lib.names(kind)
    return ", ".join(repr(n) for n in names) if names else f"none — the library ({lib.root}) has no usable {kind}"


# --- LoRAs and ControlNets ---------------------------------------------------------------------------

def resolve_loras(settings: Settings, loras: list[Lora], *, model: ModelChoice) -> list[LoraChoice]:
    lib = library(settings)
    chosen = []
    for lora in loras:
        entry = lib.find(lora.name, kind="lora")
        if entry is None:
            raise ModelRefused(f"unknown LoRA {lora.name!r}: choose one of {_choices(lib, 'lora')} "
                               "(GET /api/v1/models)", code="unknown_lora")
        if entry.problem:
            raise ModelRefused(f"LoRA {lora.name!r} cannot be used: {entry.problem}", code="lora_unusable")
        if model.entry is not None and (conflict := lib.lora_conflict(entry, model.entry)):
            raise ModelRefused(conflict, code="lora_incompatible")
        chosen.append(LoraChoice(name=entry.name, path=str(lora_file(entry)), weight=lora.weight,
                                 fingerprint=entry.fingerprint, text_encoder=entry.text_encoder))
    return chosen


def resolve_controls(settings: Settings, controls: list[Control], *, model: ModelChoice) -> list[ControlChoice]:
    lib = library(settings)
    chosen = []
    for control in controls:
        if control.model:
            entry = lib.find(control.model, kind="controlnet")
            if entry is None:
                raise ModelRefused(f"unknown ControlNet {control.model!r}: choose one of "
                                   f"{_choices(lib, 'controlnet')} (GET /api/v1/models)", code="unknown_controlnet")
            reason = entry.problem or (lib.controlnet_conflict(entry, model.entry) if model.entry else None)
            found: ModelEntry | str = reason or entry
        else:
            found = lib.controlnet_for(control.type, checkpoint=model.entry or _unknown_base(),
                                       mapping=settings.controlnets)
        if isinstance(found, str):
            raise ModelRefused(found, code="unknown_controlnet")
        chosen.append(ControlChoice(type=control.type, name=found.name, path=str(found.path),
                                    fingerprint=found.fingerprint, scale=control.scale, start=control.start,
                                    end=control.end))
    return chosen


def resolve_depth(settings: Settings) -> ModelEntry:
    """The depth estimator that makes depth maps (PIXELMILL_DEPTH_MODEL, else the first usable one)."""
    lib = library(settings)
    if settings.depth_model:
        entry = lib.find(settings.depth_model, kind="depth")
        if entry is None or entry.problem:
            why = entry.problem if entry else "it is not in the library (depth/)"
            raise ModelRefused(f"the depth model {settings.depth_model!r} (PIXELMILL_DEPTH_MODEL) cannot be used: "
                               f"{why}", code="depth_unavailable")
        return entry
    usable = [e for e in lib.entries("depth") if e.is_usable]
    if not usable:
        raise ModelRefused("depth control needs a depth model in the library: put a Depth Anything folder at "
                           "depth/<name>/ (e.g. depth-anything/Depth-Anything-V2-Small-hf, Apache-2.0)",
                           code="depth_unavailable")
    return usable[0]


def resolve_clip(settings: Settings) -> ModelEntry:
    """The CLIP model that scores results against their prompt (PIXELMILL_CLIP_MODEL, a name in clip/)."""
    if not settings.clip_model:
        lib = library(settings)
        raise ModelRefused("CLIPScore needs a CLIP model: the operator sets PIXELMILL_CLIP_MODEL to a name in the "
                           f"library's clip/ (CLIP models there now: {_choices(lib, 'clip')}; e.g. "
                           "openai/clip-vit-base-patch32, MIT)", code="clip_unavailable")
    entry = library(settings).find(settings.clip_model, kind="clip")
    if entry is None or entry.problem:
        why = entry.problem if entry else "it is not in the library (clip/)"
        raise ModelRefused(f"the CLIP model {settings.clip_model!r} (PIXELMILL_CLIP_MODEL) cannot be used: {why}",
                           code="clip_unavailable")
    return entry


@dataclass(frozen=True)
class FaceModels:
    restorer: ModelEntry
    detector: ModelEntry


_FACE_SETTINGS = {"restorer": ("face_restorer", "PIXELMILL_FACE_RESTORER", "a GFPGAN-class restorer (e.g. GFPGANv1.4 "
                                                                           "exported to ONNX, Apache-2.0)"),
                  "detector": ("face_detector", "PIXELMILL_FACE_DETECTOR", "the YuNet detector "
                                                                           "(face_detection_yunet_2023mar.onnx)")}


def resolve_faces(settings: Settings) -> FaceModels:
    """The restorer and the detector face_restore runs with (PIXELMILL_FACE_RESTORER and
    PIXELMILL_FACE_DETECTOR, names in face/); ModelRefused (422) names the setting that is missing."""
    lib = library(settings)
    chosen = {}
    for role, (field, env, example) in _FACE_SETTINGS.items():
        name = getattr(settings, field)
        fitting = [e.name for e in lib.entries("face") if e.role == role and e.is_usable]
        choices = ", ".join(repr(n) for n in fitting) or "none"
        if not name:
            raise ModelRefused(f"face_restore needs a face {role}, and none is configured: the operator sets {env} "
                               f"to {example} in the library's face/ folder ({role}s there now: {choices}; README: "
                               "face restoration)", code="face_restore_unavailable")
        entry = lib.find(name, kind="face")
        why = ("it is not in the library (face/)" if entry is None else entry.problem
               or (f"it is a face {entry.role}, not a {role}" if entry.role != role else None))
        if why:
            raise ModelRefused(f"the face {role} {name!r} ({env}) cannot be used: {why} ({role}s there now: "
                               f"{choices})", code="face_restore_unavailable")
        chosen[role] = entry
    return FaceModels(**chosen)


def _unknown_base() -> ModelEntry:
    return ModelEntry(name="the default model", kind="checkpoint", path=Path("."), format="hub", size_bytes=0)


# --- at submit ---------------------------------------------------------------------------------------

def check_params(settings: Settings, params: JobParams) -> JobParams:
    """``params`` with what it names checked and recorded: the checkpoint (the default's name when
    left out) and each control's ControlNet. ModelRefused (422) names the choices or the reason.
    A style job ignores the diffusion-only fields."""
    if params.face_restore is not None:
        resolve_faces(settings)
    if params.engine != "diffusion":
        if params.model or params.control or params.loras or params.clip_skip:
            return params.model_copy(update={"model": None, "control": [], "loras": [], "clip_skip": 0})
        return params
    model = resolve_model(settings, params.model)
    layers = model.entry.text_layers if model.entry else None
    if layers and params.clip_skip >= layers:
        raise ModelRefused(f"clip_skip {params.clip_skip} is too large: {model.name!r}'s text encoder has {layers} "
                           f"layers, so at most {layers - 1}", code="invalid_clip_skip")
    resolve_loras(settings, params.loras, model=model)
    controls = resolve_controls(settings, params.control, model=model)
    if any(c.type == "depth" for c in controls):
        resolve_depth(settings)
    recorded = [c.model_copy(update={"model": chosen.name}) for c, chosen in zip(params.control, controls, strict=True)]
    return params.model_copy(update={"model": model.name, "control": recorded})
