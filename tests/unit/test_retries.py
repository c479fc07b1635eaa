"""Transient-error policy of the stages: bounded retries with jittered exponential backoff."""

from __future__ import annotations

import pytest
import redis
import torch

from tasks.backoff import backoff_s
from tasks.stages.base import MAX_RETRIES, TRANSIENT


@pytest.mark.parametrize("retries", range(12))
def test_backoff_grows_with_jitter_and_a_cap(retries):
    delay = min(60.0, 2.0 ** retries)
    samples = [backoff_s(retries, base_s=1.0, cap_s=60.0) for _ in range(200)]
    assert all(delay / 2 <= s <= delay for s in samples)
    assert len({round(s, 6) for s in samples}) > 100  # jittered: retries do not come back together


def test_transient_errors_are_bounded():
    assert set(TRANSIENT) == set(MAX_RETRIES)
    assert MAX_RETRIES[torch.OutOfMemoryError] == 3
    # ten Redis retries ride out a restart or failover of a few minutes, not forever
    total = sum(min(60.0, 2.0 ** n) for n in range(MAX_RETRIES[redis.ConnectionError]))
    assert 180 <= total <= 600
