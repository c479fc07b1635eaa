"""The model library over HTTP: GET /api/v1/models lists what jobs may name (checkpoints, LoRAs,
ControlNets, auxiliary models) with each one's kind, base and size, the default model, and why a
listed model cannot be used. Torch-free (workers.library reads configs and safetensors headers)."""

from __future__ import annotations

from typing import Literal

from flask import Blueprint
from pydantic import Field

from tasks.errors import PixelmillError
from tasks.models import ModelChoice, library, resolve_model
from tasks.present import View
from tasks.settings import Settings
from web.extensions import pixelmill
from web.openapi import Json, operation
from workers.library import CONTROL_TYPES, KINDS

bp = Blueprint("models_api", __name__, url_prefix="/api/v1/models")


class Model(View):
    name: str = Field(description="what a job names: params.model, loras[].name or control[].model")
    kind: Literal["checkpoint", "lora", "controlnet", "depth", "clip", "face"]
    format: str = Field(description="diffusers (a folder), single_file (an A1111/ComfyUI .safetensors), lora, "
                                    "transformers, onnx (face models), reserved; hub: the default model is a hub id")
    base: str | None = Field(description="the architecture it belongs to, by cross-attention width: sd1 (768), sd2 "
                                         "(1024), sdxl (2048), ca<N> otherwise; LoRAs and ControlNets must match "
                                         "their checkpoint's")
    size_bytes: int
    control_type: str | None = Field(description="ControlNets: the control type it serves (from its name)")
    text_encoder: bool | None = Field(description="LoRAs: whether it also adapts the text encoder")
    role: str | None = Field(None, description="face models: restorer (GFPGAN-class, PIXELMILL_FACE_RESTORER) or "
                                              "detector (YuNet, PIXELMILL_FACE_DETECTOR)")
    usable: bool
    problem: str | None = Field(description="why it cannot be used (only pickle weights, no config …)")
    default: bool = Field(False, description="the model a job without `model` runs on")


class ModelList(View):
    """The model library (PIXELMILL_MODELS_DIR) as jobs see it."""

    models: list[Model]
    default: str | None = Field(description="the default checkpoint (PIXELMILL_DIFFUSION_MODEL): a library name, "
                                            "or the path or hub id it is set to")
    default_problem: str | None = Field(None, description="why the default cannot be used, when it cannot")
    control_types: list[str] = Field(description="what control[].type accepts")


@bp.get("")
@operation("listModels", "models", "The model library: checkpoints, LoRAs, ControlNets", ok=(200, Json(ModelList)),
           description="What `model`, `loras` and `control` of a diffusion job may name. A job naming anything "
                       "else, or something listed as not usable, is refused with 422 and these choices.")
def list_models():
    return model_list(pixelmill.services.settings)


def model_list(settings: Settings) -> ModelList:
    entries = library(settings).entries()
    default: ModelChoice | None = None
    problem = None
    if settings.diffusion_model:
        try:
            default = resolve_model(settings)
        except PixelmillError as e:
            problem = str(e)
    models = [Model(**e.public(), default=default is not None and default.entry is not None
                    and e.path == default.entry.path and e.kind == "checkpoint") for e in entries]
    if default is not None and not any(m.default for m in models):  # the default lies outside the library
        entry = default.entry
        models.insert(0, Model(name=default.name, kind="checkpoint", format=entry.format if entry else default.format,
                               base=entry.base if entry else None, size_bytes=entry.size_bytes if entry else 0,
                               control_type=None, text_encoder=None, usable=True, problem=None, default=True))
    models.sort(key=lambda m: (KINDS.index(m.kind), not m.default, m.name))
    return ModelList(models=models, default=default.name if default else settings.diffusion_model,
                     default_problem=problem, control_types=list(CONTROL_TYPES))
