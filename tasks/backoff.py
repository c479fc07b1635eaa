"""One backoff for everything that retries (stages on transient faults, webhook deliveries)."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_s(attempt: int, *, base_s: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with "equal jitter": between half and all of min(cap, base·2^attempt),
    so retries spread out but never come back at once. ``attempt`` counts from 0."""
    delay = min(cap_s, base_s * 2 ** max(0, attempt))
    return delay * (0.5 + rand() / 2)
