"""What work costs: the worker-process time a stage used on a queue, priced per hour.

A stage records ``device_s`` (its wall time, or its share of a device it shared with other
jobs); the setting ``price_per_hour`` prices each queue's worker-process hour in USD, so a
stage costs ``device_s × price_per_hour[queue] / 3600``. A queue with no price costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tasks.jobs import Job

UNKNOWN_QUEUE = "unknown"  # a stage whose queue was not recorded (it has no price)


@dataclass(frozen=True)
class Cost:
    usd: float = 0.0
    device_seconds: dict[str, float] = field(default_factory=dict)  # by queue

    def to_dict(self) -> dict[str, Any]:
        return {"usd": round(self.usd, 10),
                "device_seconds": {queue: round(s, 4) for queue, s in sorted(self.device_seconds.items())}}


def stage_cost_usd(device_s: float, queue: str | None, prices: Mapping[str, float]) -> float:
    """USD for ``device_s`` seconds of one worker process on ``queue``."""
    return max(device_s, 0.0) * prices.get(queue or UNKNOWN_QUEUE, 0.0) / 3600


def job_cost(job: Job, prices: Mapping[str, float]) -> Cost:
    """What a job's stages used so far (a stage that never finished recorded nothing), with the
    attempts its quality policy regenerated."""
    seconds: dict[str, float] = {}
    for record in job.stages.values():
        if record.device_s is not None:
            queue = record.queue or UNKNOWN_QUEUE
            seconds[queue] = seconds.get(queue, 0.0) + record.device_s
    for attempt in job.attempts:  # generations a quality policy set aside (their stages were reset)
        for queue, used in (attempt.get("device_seconds") or {}).items():
            seconds[queue] = seconds.get(queue, 0.0) + used
    return priced(seconds, prices)


def priced(device_seconds: Mapping[str, float], prices: Mapping[str, float]) -> Cost:
    return Cost(usd=sum(stage_cost_usd(s, queue, prices) for queue, s in device_seconds.items()),
                device_seconds=dict(device_seconds))


def total_cost(costs: Iterable[Cost]) -> Cost:
    usd, seconds = 0.0, {}
    for cost in costs:
        usd += cost.usd
        for queue, s in cost.device_seconds.items():
            seconds[queue] = seconds.get(queue, 0.0) + s
    return Cost(usd=usd, device_seconds=seconds)


def per_image(usd: float, images: int) -> float | None:
    """Spend divided by the images it delivered: failed and blocked work is part of the price."""
    return round(usd / images, 10) if images else None
