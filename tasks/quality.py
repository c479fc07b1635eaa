"""Quality levels: a job asks for `draft`, `standard` or `best` and gets that level's defaults
(steps, size) and the class of worker that serves it — a queue whose workers run at the
precision the level wants (a worker declares its dtype with PIXELMILL_DTYPE; e.g. fp16 workers on
`gpu`, fp32 workers on `gpu-exact`). Parameters the caller sent win over the level's defaults.
The level's queue serves the diffusion stages (encode, generate); enhance and audit go where the
routing policy sends them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.jobs import JobParams

DIFFUSION_STAGES = ("encode", "generate")
DEFAULTS = ("steps", "size", "strength")  # what a level may fill in


def apply_quality(params: JobParams, levels: Mapping[str, Mapping[str, Any]]) -> JobParams:
    """``params`` with its quality level's defaults for the fields the caller did not send."""
    level = levels.get(params.quality) if params.quality else None
    if not level:
        return params
    update = {name: level[name] for name in DEFAULTS if name in level and name not in params.model_fields_set}
    if not update:
        return params
    return JobParams(**params.model_dump(exclude_unset=True), **update)  # validated again (steps × strength …)


def quality_queue(params: Mapping[str, Any], stage: str, levels: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The queue a diffusion stage of this job must run on, when its quality level names one."""
    if params.get("engine") != "diffusion" or stage not in DIFFUSION_STAGES or not params.get("quality"):
        return None
    return (levels.get(params["quality"]) or {}).get("queue")


def level_queues(levels: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted({level["queue"] for level in levels.values() if level.get("queue")})
