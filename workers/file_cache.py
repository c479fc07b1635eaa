"""What was read from a file, kept by the file's path, size and modification time: a file that
changes is read again. The library's header readers (safetensors, ONNX) keep theirs in one."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class FileCache(Generic[T]):
    def __init__(self, size: int, *, error: type[Exception]) -> None:
        self.size, self.error = size, error
        self._items: dict[tuple[str, int, int], T] = {}
        self._lock = threading.Lock()

    def get(self, path: str | Path, read: Callable[[Path, int], T]) -> T:
        """``read(path, size)`` of the file as it is now, kept until it changes (the oldest entry goes
        when the cache is full); a file that cannot be found raises ``error``."""
        target = Path(path)
        try:
            stat = target.stat()
        except OSError as e:
            raise self.error(f"cannot read {target}: {e.strerror or e}") from e
        key = (str(target.resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._items:
                return self._items[key]
        value = read(target, stat.st_size)
        with self._lock:
            if len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = value
        return value
