"""The four stage tasks. Each is thin: fetch inputs by reference, call an engine, store the
output, move the job's state (see tasks.stages.base)."""

from tasks.stages.audit import audit
from tasks.stages.encode import encode
from tasks.stages.enhance import enhance
from tasks.stages.generate import generate

STAGE_TASKS = {"encode": encode, "generate": generate, "enhance": enhance, "audit": audit}

__all__ = ["STAGE_TASKS", "audit", "encode", "enhance", "generate"]
