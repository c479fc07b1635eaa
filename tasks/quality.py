"""Quality levels: a job asks for `draft`, `standard` or `best` and gets that level's defaults
(steps, size) and the class of worker that serves it — a queue whose workers run at the
precision the level wants. Parameters the caller sent win over the level's defaults.
The level's queue serves the diffusion stages (encode, generate); enhance and audit go where the
routing policy sends them.

Precision per queue: a worker declares its dtype per queue (``queue_dtypes``, e.g. fp16 on
`gpu.high` and `gpu`, fp32 on `gpu.low` or on a queue `gpu-exact`; PIXELMILL_DTYPE for the rest),
and runs each diffusion stage at the dtype of the queue its message came from — one worker that
serves several queues holds one resident copy of the model per dtype it uses. Batch keys, latent,
prompt and result cache keys carry the dtype, and each stage records the one it ran at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.jobs import JobParams
from tasks.priority import base_of

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


def queue_dtype(queue: str | None, *, queue_dtypes: Mapping[str, str], default: str) -> str:
    """The dtype a diffusion stage taken from ``queue`` runs at: the queue's own entry, else its
    base's (`gpu` for `gpu.low`), else ``default`` (PIXELMILL_DTYPE, or the autotune plan's)."""
    if queue is None:
        return default
    return queue_dtypes.get(queue) or queue_dtypes.get(base_of(queue)) or default
