"""pixelmill's own Celery app with no-op engines, for the orchestration benchmark: every stage
task, its job-store transactions, done markers, events, routing and chain are the real ones;
only the work inside each stage (normalise, generate, enhance, audit) is replaced by passing
the input reference along."""

from __future__ import annotations

import importlib

from tasks.celery_app import app  # noqa: F401 — the worker's app
from tasks.jobs import JobStatus
from tasks.stages.base import StageResult

# tasks.stages exports the task objects under the modules' names: fetch the modules themselves.
_stage = {name: importlib.import_module(f"tasks.stages.{name}") for name in ("encode", "generate", "enhance", "audit")}

_stage["encode"]._encode = lambda job, rt, **_: StageResult(outputs={"normalized": job.input_ref})
_stage["generate"]._generate = lambda job, rt, **_: StageResult(outputs={"generated": job.outputs["normalized"]})
_stage["enhance"]._enhance = lambda job, rt: StageResult(outputs={"enhanced": job.outputs["generated"]})
_stage["audit"]._audit = lambda job, rt: StageResult(outputs={"result": job.outputs["enhanced"]},
                                                     end=JobStatus.SUCCEEDED, audit={"verdict": "pass", "noop": True})
