"""The Job model: its status, its parameters and the record kept for it."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
for _terminal in TERMINAL:
    ALLOWED[_terminal] = frozenset()


def can_move(current: JobStatus, new: JobStatus) -> bool:
    return new in ALLOWED[current]


Engine = Literal["style", "diffusion"]
StyleName = Literal["cartoon", "sketch", "watercolor", "product"]


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

    @model_validator(mode="after")
    def _enough_steps(self) -> "JobParams":
        reason = no_denoising_reason(self.steps, self.strength) if self.engine == "diffusion" else None
        if reason:
            raise ValueError(reason)
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

    @classmethod
    def create(cls, *, tenant: str, params: JobParams, input_ref: str, input_name: str = "",
               batch_id: str | None = None, deadline_s: float | None = None) -> "Job":
        return cls(
            expires_at=time.time() + deadline_s if deadline_s else None,
            id=new_id(),
            tenant=tenant,
            params=params.model_dump(),
            input_ref=input_ref,
            input_name=input_name,
            batch_id=batch_id,
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
