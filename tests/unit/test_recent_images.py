"""A worker's recent images (tasks/recent_images.py): read-only copies, bounded by bytes."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.recent_images import RecentImages


def _image(value: int, side: int = 10) -> np.ndarray:
    return np.full((side, side, 3), value, np.uint8)


def test_keeps_a_read_only_copy():
    recent, image = RecentImages(), _image(7)
    recent.put("a.png", image)
    image[:] = 0  # the caller's array changes afterwards: the kept one does not
    kept = recent.get("a.png")
    assert kept is not None and int(kept.max()) == 7
    with pytest.raises(ValueError):
        kept[0, 0, 0] = 1


def test_least_recently_used_goes_first_past_the_budget():
    recent = RecentImages(max_bytes=3 * _image(0).nbytes)
    for ref in ("a", "b", "c"):
        recent.put(ref, _image(1))
    recent.get("a")  # a is used: b is now the oldest
    recent.put("d", _image(2))
    assert recent.get("b") is None
    assert all(recent.get(ref) is not None for ref in ("a", "c", "d"))


def test_an_image_over_the_whole_budget_is_not_kept():
    recent = RecentImages(max_bytes=100)
    image = _image(3)
    assert recent.put("big", image) is image
    assert recent.get("big") is None and len(recent) == 0
