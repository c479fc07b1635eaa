"""One stack per data folder: a lock file held with ``flock`` for as long as the stack (or the
Redis it started) runs. Two redis-servers on one append-only file corrupt it; two `make run` in
two terminals is all it takes, so the second one stops at once and says who holds the folder.

The lock goes with the open file, not the process: a redis-server started by the project gets
the locked descriptor too (``pass_fds``), so the folder stays locked while that Redis lives,
even if the process that started it was killed.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

LOCK_NAME = "pixelmill.lock"


class FolderInUse(RuntimeError):
    """Another stack (or a Redis of the project's) holds this data folder."""


@dataclass
class FolderLock:
    folder: Path
    fd: int | None = field(default=None, init=False)

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self, **about: object) -> "FolderLock":
        """Take the lock or raise FolderInUse naming the holder; ``about`` (url, what) is recorded
        for the next one who tries."""
        if self.fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise FolderInUse(describe_holder(self.folder, holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.time(), **about}).encode(), 0)
        self.fd = fd
        return self

    def update(self, **about: object) -> None:
        """Add to what the lock file says about its holder (the Redis URL once it is known)."""
        if self.fd is None:
            return
        data = {**_read(self.fd), **about}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(data).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def describe_holder(folder: Path, holder: dict) -> str:
    what = holder.get("what", "a pixelmill stack")
    where = f" serving {holder['url']}" if holder.get("url") else ""
    redis = f", Redis at {holder['redis_url']}" if holder.get("redis_url") else ""
    return (f"{folder} is in use by {what} (pid {holder.get('pid', '?')}{where}{redis}). One stack per data "
            f"folder: stop that one first, or give this one another folder (--data-dir or PIXELMILL_DATA_DIR).")
