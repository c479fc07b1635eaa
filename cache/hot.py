"""The hot tier: a byte-budgeted LRU of latents inside one worker process.

It keeps tensors where they were put — on the GPU for a GPU worker, so a repeat skips both the
Redis round trip and the host-to-device copy. Its budget counts the tensors' bytes
(``numel × element_size``), not Python's overhead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


def nbytes(tensor: Any) -> int:
    """Bytes of a torch tensor or numpy array."""
    if hasattr(tensor, "element_size"):
        return int(tensor.numel() * tensor.element_size())
    return int(tensor.nbytes)


@dataclass(frozen=True)
class HotStats:
    entries: int
    bytes: int
    max_bytes: int


class HotTier:
    """A least-recently-used map from latent reference to tensor, bounded in bytes."""

    def __init__(self, *, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"the hot tier's budget must be >= 0 bytes, got {max_bytes} (PIXELMILL_CACHE_HOT_BYTES)")
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, ref: str) -> Any | None:
        with self._lock:
            item = self._items.get(ref)
            if item is None:
                return None
            self._items.move_to_end(ref)
            return item[0]

    def put(self, ref: str, tensor: Any) -> bool:
        """Keep ``tensor``; evict the least recently used until it fits. False if it can never fit."""
        size = nbytes(tensor)
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(ref, None)
            if old is not None:
                self._bytes -= old[1]
            while self._items and self._bytes + size > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted
            self._items[ref] = (tensor, size)
            self._bytes += size
        return True

    def drop(self, ref: str) -> None:
        with self._lock:
            old = self._items.pop(ref, None)
            if old is not None:
                self._bytes -= old[1]

    def drop_prefix(self, prefix: str) -> int:
        """Forget every entry whose reference starts with ``prefix`` (a scope's token)."""
        with self._lock:
            gone = [ref for ref in self._items if ref.startswith(prefix)]
            for ref in gone:
                self._bytes -= self._items.pop(ref)[1]
        return len(gone)

    def __contains__(self, ref: str) -> bool:
        with self._lock:
            return ref in self._items

    def stats(self) -> HotStats:
        with self._lock:
            return HotStats(entries=len(self._items), bytes=self._bytes, max_bytes=self.max_bytes)
