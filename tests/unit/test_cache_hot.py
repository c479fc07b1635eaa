"""The in-worker hot tier: an LRU bounded in bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cache.hot import HotTier, nbytes


def _latent(side: int) -> torch.Tensor:
    return torch.zeros((1, 4, side, side), dtype=torch.float32)  # 16·side² bytes


def test_bytes_are_counted_from_the_tensor() -> None:
    assert nbytes(_latent(8)) == 4 * 8 * 8 * 4
    assert nbytes(torch.zeros(10, dtype=torch.float16)) == 20
    assert nbytes(np.zeros(10, dtype=np.float64)) == 80


def test_least_recently_used_goes_first_and_the_budget_holds() -> None:
    hot = HotTier(max_bytes=3 * 1024)  # three 1 KiB latents
    for ref in "abc":
        assert hot.put(ref, _latent(8))
    assert hot.get("a") is not None  # a is now the most recent
    hot.put("d", _latent(8))
    assert "b" not in hot and all(ref in hot for ref in "acd")
    assert hot.stats().bytes == 3 * 1024 and hot.stats().entries == 3
    hot.put("big", _latent(16))  # 4 KiB: over the whole budget, never kept
    assert "big" not in hot and hot.stats().bytes <= hot.max_bytes


def test_replacing_an_entry_does_not_double_count() -> None:
    hot = HotTier(max_bytes=4096)
    hot.put("a", _latent(8))
    hot.put("a", _latent(8))
    assert hot.stats().bytes == 1024


def test_a_scope_can_be_dropped() -> None:
    hot = HotTier(max_bytes=1 << 20)
    for ref in ("t1:a", "t1:b", "t2:a"):
        hot.put(ref, _latent(2))
    assert hot.drop_prefix("t1:") == 2 and "t2:a" in hot and hot.stats().entries == 1


def test_tensors_stay_on_their_device() -> None:
    hot = HotTier(max_bytes=1 << 20)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hot.put("a", _latent(4).to(device))
    assert hot.get("a").device.type == device


def test_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="PIXELMILL_CACHE_HOT_BYTES"):
        HotTier(max_bytes=-1)
