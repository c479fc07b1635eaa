"""The images a worker process saved or loaded last, kept decoded by blob ref.

A job's next stage usually runs in the same worker process (a solo or threads pool always; a
prefork child often), and would otherwise decode the PNG that the stage before it has just
encoded. Blob refs are content addresses, so an entry never goes stale; entries are read-only
copies, so no stage can change what another one reads. Bounded by bytes, least recently used out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # ~36 images of 768², 4 of 2048²


class RecentImages:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, ref: str) -> np.ndarray | None:
        with self._lock:
            image = self._images.get(ref)
            if image is not None:
                self._images.move_to_end(ref)
            return image

    def put(self, ref: str, image: np.ndarray) -> np.ndarray:
        """Keep a read-only copy of ``image`` under ``ref``; returns what is kept (or the image, when
        it is larger than the whole budget)."""
        if image.nbytes > self.max_bytes:
            return image
        kept = np.array(image, copy=True)
        kept.flags.writeable = False
        with self._lock:
            if ref in self._images:
                self._images.move_to_end(ref)
                return self._images[ref]
            self._images[ref] = kept
            self._bytes += kept.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._images.popitem(last=False)
                self._bytes -= old.nbytes
        return kept

    def __len__(self) -> int:
        return len(self._images)
