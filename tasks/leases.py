"""Leases on in-flight stages: how the reaper tells a stage that is running from one whose
worker is gone, in seconds and with the default settings.

A stage that starts writes ``pixelmill:lease:<job>:<stage>`` (value: the holder — hostname, pid
and an incarnation id new at every process start, so a restarted worker that reuses the
hostname and even the pid is a different holder) with a TTL of ``stage_lease_s``, inside its
start transition. The worker's heartbeat renews the leases of every stage the process is
running; the finish transition deletes the lease. A worker that dies (SIGKILL, the OOM killer,
a stop that outlived its grace) stops renewing, the lease lapses, and the reaper enqueues the
stage again (tasks.reaper). Redis' visibility timeout stays as the last resort: its late
redelivery finds the stage done, or held by a live lease, and does nothing.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from tasks.store import store_key


def lease_key(job_id: str, stage: str) -> str:
    return store_key("lease", job_id, stage)


@dataclass(frozen=True)
class Holder:
    hostname: str
    pid: int
    incarnation: str

    @classmethod
    def parse(cls, raw: bytes | str) -> Holder | None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.rsplit("|", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(hostname=parts[0], pid=int(parts[1]), incarnation=parts[2])

    def __str__(self) -> str:
        return f"{self.hostname}|{self.pid}|{self.incarnation}"

    def is_gone(self) -> bool:
        """Certainly dead: a process of this machine that no longer exists (or is another
        process now). A holder on another machine is never judged here: its lease lapses."""
        if self.hostname != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return self.incarnation != current_holder().incarnation
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


_holder: Holder | None = None
_held: dict[tuple[str, str], int] = {}
_lock = threading.Lock()


def current_holder() -> Holder:
    """This process's holder identity; a new incarnation after a fork."""
    global _holder
    if _holder is None or _holder.pid != os.getpid():
        _holder = Holder(hostname=socket.gethostname(), pid=os.getpid(), incarnation=uuid.uuid4().hex[:12])
    return _holder


@contextmanager
def holding(job_id: str, stage: str) -> Iterator[None]:
    """Mark a stage as running in this process while the block runs (the heartbeat renews it)."""
    key = (job_id, stage)
    with _lock:
        _held[key] = _held.get(key, 0) + 1
    try:
        yield
    finally:
        with _lock:
            if _held.get(key, 0) <= 1:
                _held.pop(key, None)
            else:
                _held[key] -= 1


def held() -> list[tuple[str, str]]:
    with _lock:
        return sorted(_held)


def renew(client: redis.Redis, *, ttl_s: int) -> list[tuple[str, str]]:
    """Extend the lease of every stage this process runs (one pipeline); returns them."""
    running = held()
    if running:
        holder = str(current_holder())
        with client.pipeline(transaction=False) as pipe:
            for job_id, stage in running:
                pipe.set(lease_key(job_id, stage), holder, ex=ttl_s)
            pipe.execute()
    return running


def fetch_holder(client: redis.Redis, job_id: str, stage: str) -> Holder | None:
    raw = client.get(lease_key(job_id, stage))
    return Holder.parse(raw) if raw else None
