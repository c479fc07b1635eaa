"""The Job model: its status, its parameters and the record kept for it."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.settings import STAGES
from workers.schedule import no_denoising_reason


class JobStatus(str, Enum):
    QUEUED = "queued"
    ENCODING = "encoding"
    GENERATING = "generating"
    ENHANCING = "enhancing"
    AUDITING = "auditing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.BLOCKED, JobStatus.CANCELED})

# The status a job has while each stage runs.
STAGE_STATUS: dict[str, JobStatus] = {
    "encode": JobStatus.ENCODING,
    "generate": JobStatus.GENERATING,
    "enhance": JobStatus.ENHANCING,
    "audit": JobStatus.AUDITING,
}

# Allowed moves. A job moves forward through the stages (a re-delivered stage may
# re-enter its own status); any live state may end failed or canceled.
_ORDER = [JobStatus.QUEUED, *STAGE_STATUS.values()]
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    status: frozenset(_ORDER[i:] + [JobStatus.FAILED, JobStatus.CANCELED])
    | ({JobStatus.SUCCEEDED, JobStatus.BLOCKED} if status is JobStatus.AUDITING else set())
    for i, status in enumerate(_ORDER)
}
# A quality policy that regenerates (safety.quality_policy) starts the chain again at generate.
ALLOWED[JobStatus.AUDITING] |= {JobStatus.GENERATING}
for _terminal in TERMINAL:
    ALLOWED[_terminal] = frozenset()


def can_move(current: JobStatus, new: JobStatus) -> bool:
    return new in ALLOWED[current]


Engine = Literal["style", "diffusion"]
StyleName = Literal["cartoon", "sketch", "watercolor", "product"]
ControlType = Literal["canny", "tile", "depth"]
MAX_CONTROLS = 3
MAX_LORAS = 5
MAX_CLIP_SKIP = 11  # SD's CLIP has 12 layers; a smaller text encoder is checked against its own at submit


class Control(BaseModel):
    """One ControlNet guiding a diffusion job by a map computed from the input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ControlType = Field(description="canny: edges (OpenCV, thresholds from the median); tile: a blurred "
                                          "downsample (keeps colours and layout); depth: a depth map (a depth "
                                          "model of the library)")
    scale: float = Field(1.0, ge=0.0, le=2.0, description="how strongly the map guides (controlnet_conditioning_scale)")
    start: float = Field(0.0, ge=0.0, le=1.0, description="the fraction of the schedule where guidance starts")
    end: float = Field(1.0, ge=0.0, le=1.0, description="the fraction of the schedule where guidance ends")
    model: str | None = Field(None, max_length=200, description="the ControlNet (a library name); chosen by type "
                                                                "and recorded at submit when left out")

    @model_validator(mode="after")
    def _ordered(self) -> "Control":
        if self.start >= self.end:
            raise ValueError(f"control {self.type}: start ({self.start}) must be before end ({self.end})")
        return self


class Lora(BaseModel):
    """One LoRA (a library name) applied with a weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200, description="a LoRA of the library (GET /api/v1/models)")
    weight: float = Field(1.0, ge=-2.0, le=2.0, description="its strength: 0 leaves the model as it is")


def _listed(value: Any, *, key: str, number: str) -> Any:
    """A form field's text as a list: JSON (``[{"type": "canny"}]``), or comma-separated
    ``item[:number]`` (``canny:0.8,tile`` / ``my-lora:0.6``); anything else is left to validation."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if text[0] in "[{":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON: {e}") from e
        return [loaded] if isinstance(loaded, dict) else loaded
    items = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        head, sep, tail = part.rpartition(":") if ":" in part else (part, "", "")
        items.append({key: head, number: tail} if sep else {key: part})
    return items


class JobParams(BaseModel):
    """What a caller asks for. Validated at the edge; stored on the job as given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Engine = Field("style", description="style: classical filters (fast, CPU); diffusion: img2img "
                                                "with the prompt")
    style: StyleName = Field("cartoon", description="the look, for the style engine")
    style_strength: float = Field(1.0, ge=0.0, le=1.0, description="style engine: 0 keeps the input, 1 the full style")
    prompt: str = Field("", max_length=1000, description="diffusion: what the result should show")
    negative_prompt: str = Field("", max_length=1000, description="diffusion: what it should not")
    strength: float = Field(0.6, gt=0.0, le=1.0, description="diffusion: how far from the input (noise added)")
    steps: int = Field(20, ge=1, le=150, description="diffusion: denoising steps (steps × strength run)")
    guidance: float = Field(7.5, ge=0.0, le=30.0, description="diffusion: how closely to follow the prompt")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="for a reproducible result; one is chosen "
                                                                   "and recorded when left out")
    size: int = Field(512, ge=64, le=2048, description="the longer side the input is brought to, in pixels")
    upscale: Literal[1, 2, 4] = Field(1, description="enhance: enlarge the result by this factor")
    sharpen: bool = Field(False, description="enhance: sharpen the result")
    local_contrast: bool = Field(False, description="enhance: local contrast (CLAHE)")
    face_restore: float | None = Field(None, ge=0.0, le=1.0, description="enhance: restore the faces found in "
                                                                    "the result, with this weight of the "
                                                                    "restored face over the original (0 keeps "
                                                                    "it, 1 is all restorer; 0.5 is a common "
                                                                    "choice); needs a restorer and a detector "
                                                                    "(PIXELMILL_FACE_RESTORER, "
                                                                    "PIXELMILL_FACE_DETECTOR)")
    quality: Literal["draft", "standard", "best"] | None = Field(None, description="diffusion: a service level: "
                                                                   "its steps and size unless you send them, and "
                                                                   "the class of worker (queue, precision) that "
                                                                   "serves it (setting quality_levels)")
    priority: Literal["high", "normal", "low"] = Field("normal", description="which queue level it waits in: "
                                                                         "workers take high before normal before "
                                                                         "low; a tenant's highest allowed level is "
                                                                         "set by the admin")
    model: str | None = Field(None, max_length=500, description="diffusion: the checkpoint, a name from GET "
                                                                "/api/v1/models; left out: the server's default "
                                                                "(recorded at submit)")
    control: list[Control] = Field(default_factory=list, max_length=MAX_CONTROLS,
                                   description="diffusion: ControlNets guiding the result by maps of the input "
                                               "(as a form field also `canny:0.8,tile`)")
    loras: list[Lora] = Field(default_factory=list, max_length=MAX_LORAS,
                              description="diffusion: LoRAs applied with their weights (as a form field also "
                                          "`name:0.7,other`)")
    clip_skip: int = Field(0, ge=0, le=MAX_CLIP_SKIP, description="diffusion: skip the text encoder's last layers "
                                                                 "(0: none, 1: the penultimate layer's output)")
    min_clipscore: float | None = Field(None, ge=0.0, le=100.0, description="diffusion: the CLIPScore (0-100) the "
                                                                         "result should reach; below it the tenant's "
                                                                         "quality policy acts (flag when it has none); "
                                                                         "needs a CLIP model (PIXELMILL_CLIP_MODEL)")

    @field_validator("control", mode="before")
    @classmethod
    def _control_text(cls, value: Any) -> Any:
        return _listed(value, key="type", number="scale")

    @field_validator("loras", mode="before")
    @classmethod
    def _loras_text(cls, value: Any) -> Any:
        return _listed(value, key="name", number="weight")

    @model_validator(mode="after")
    def _enough_steps(self) -> "JobParams":
        reason = no_denoising_reason(self.steps, self.strength) if self.engine == "diffusion" else None
        if reason:
            raise ValueError(reason)
        types = [c.type for c in self.control]
        if len(set(types)) != len(types):
            raise ValueError(f"each control type may appear once, got {', '.join(types)}")
        names = [lora.name for lora in self.loras]
        if len(set(names)) != len(names):
            raise ValueError(f"each LoRA may appear once, got {', '.join(names)}")
        return self


@dataclass
class StageRecord:
    started_at: float | None = None
    finished_at: float | None = None
    seconds: float | None = None
    attempts: int = 0
    done: bool = False
    cached: bool = False
    cache: dict[str, Any] | None = None  # how the latent cache served it: tier, match, … (cache.service)
    queue: str | None = None
    worker: str | None = None
    device_s: float | None = None  # the worker-process time it used (its share, when batched): what it costs
    requeued_at: float | None = None  # the reaper enqueued it again (its holder was gone)
    dtype: str | None = None  # the precision a diffusion stage ran at: fp32, fp16, bf16 (its queue's)

    def is_in_flight(self) -> bool:
        """Started, not done, and not waiting for a message the reaper sent since."""
        return (self.started_at is not None and not self.done
                and (self.requeued_at is None or self.started_at > self.requeued_at))


@dataclass
class Job:
    id: str
    tenant: str
    params: dict[str, Any]
    input_ref: str
    input_name: str = ""
    batch_id: str | None = None
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    expires_at: float | None = None
    stages: dict[str, StageRecord] = field(default_factory=lambda: {s: StageRecord() for s in STAGES})
    outputs: dict[str, str] = field(default_factory=dict)
    audit: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    # where the input came from: {"kind": "upload"}, {"kind": "data_uri", "media_type": …} or
    # {"kind": "url", "url": …}; never the data itself. A URL job has no input_ref until it is fetched.
    source: dict[str, Any] | None = None
    # Every generation of a job whose quality policy regenerated it (safety.quality_policy): seed,
    # scores, blobs, and which one was kept. Empty when the first attempt was the only one.
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # What face restoration did in enhance (face_restore): {"found", "restored", "weight", "restorer", "detector"}.
    faces: dict[str, Any] | None = None

    @classmethod
    def create(cls, *, tenant: str, params: JobParams, input_ref: str, input_name: str = "",
               batch_id: str | None = None, deadline_s: float | None = None,
               source: dict[str, Any] | None = None) -> "Job":
        return cls(
            expires_at=time.time() + deadline_s if deadline_s else None,
            id=new_id(),
            tenant=tenant,
            params=params.model_dump(),
            input_ref=input_ref,
            input_name=input_name,
            batch_id=batch_id,
            source=source,
        )

    @property
    def job_params(self) -> JobParams:
        return JobParams(**self.params)

    def is_expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) > self.expires_at

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, shallow: nested dicts (params, outputs, audit) are shared, not copied
        (dataclasses.asdict deep-copies them, which made it the hottest call of a stage)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["status"] = self.status.value
        data["stages"] = {name: dict(vars(record)) for name, record in self.stages.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Job":
        data = dict(data)
        data["status"] = JobStatus(data["status"])
        data["stages"] = {name: StageRecord(**rec) for name, rec in data["stages"].items()}
        return cls(**data)


@dataclass
class Batch:
    id: str
    tenant: str
    job_ids: list[str]
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_id() -> str:
    return uuid.uuid4().hex
