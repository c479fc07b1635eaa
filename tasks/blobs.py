"""Content-addressed blob store on disk: a blob's name is the sha256 of its bytes.

Writing is idempotent (same bytes, same ref) and atomic (write to a temp file, then rename),
so a re-run stage or two workers writing the same result never leave a half-written file.

Bounded: with an ``index`` (Redis), every blob is kept until the last expiry of any job that uses
it — a sorted set ``pixelmill:blob:expiry`` of refs scored by that time, raised (never lowered,
ZADD GT) by ``save`` (now + ``keep_s``, before the file is written) and by the job store when a job
records an input or an output (``keep_blobs``: the job's record lives ``job_ttl_s``). Two jobs that
share a blob (content addressing) each raise its score, so it goes only after both. The reaper
calls ``delete_expired``: it takes refs whose time is past off the index, moves each file aside,
and puts it back if a writer claimed the ref meanwhile, else deletes it.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tasks.errors import PixelmillError

_REF = re.compile(r"^[0-9a-f]{64}\.(png|jpg|webp)$")
PREFIX = "pixelmill"
# KEYS[1]: the index. ARGV: now, limit. Takes (atomically) the refs whose time is past off the index.
_TAKE_EXPIRED = """
local refs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #refs > 0 then redis.call('ZREM', KEYS[1], unpack(refs)) end
return refs
"""


def blob_key(kind: str) -> str:
    """Every Redis key of the blob store: ``pixelmill:blob:<kind>``."""
    return ":".join((PREFIX, "blob", kind))


INDEX = blob_key("expiry")


def is_blob_ref(ref: Any) -> bool:
    return isinstance(ref, str) and bool(_REF.match(ref))


def keep_blobs(pipe: Any, refs: Iterable[Any], *, until: float) -> None:
    """Queue on a pipeline (or a transition's ``Writes``): keep ``refs`` at least ``until`` (values
    that are not blob refs, such as a latent's cache ref, are skipped)."""
    mapping = {ref: until for ref in refs if is_blob_ref(ref)}
    if mapping:
        pipe.zadd(INDEX, mapping, gt=True)


@dataclass(frozen=True)
class Deleted:
    count: int = 0
    bytes: int = 0


class BlobNotFound(PixelmillError):
    code = "blob_not_found"
    status = 404


class BlobStore:
    def __init__(self, root: Path | str, *, index: redis.Redis | None = None, keep_s: float | None = None) -> None:
        self.root = Path(root)
        self.index = index  # None: blobs are kept for ever (nothing records who uses them)
        self.keep_s = keep_s
        self._take_expired = index.register_script(_TAKE_EXPIRED) if index is not None else None

    def save(self, data: bytes, *, ext: str = "png") -> str:
        ref = f"{hashlib.sha256(data).hexdigest()}.{ext}"
        if self.index is not None and self.keep_s is not None:
            self.keep([ref], until=time.time() + self.keep_s)  # first: the reaper then leaves the file alone
        path = self.path(ref)
        if path.exists():
            return ref
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ref

    def fetch(self, ref: str) -> bytes:
        path = self.path(ref)
        try:
            return path.read_bytes()
        except FileNotFoundError as e:
            raise BlobNotFound(f"blob {ref} is missing from {self.root}") from e

    def path(self, ref: str) -> Path:
        if not _REF.match(ref):
            raise BlobNotFound(f"{ref!r} is not a blob reference")
        return self.root / ref[:2] / ref

    def exists(self, ref: str) -> bool:
        return self.path(ref).exists()

    def keep(self, refs: Iterable[str], *, until: float) -> None:
        if self.index is not None:
            keep_blobs(self.index, refs, until=until)

    def delete_expired(self, *, now: float | None = None, limit: int = 1000) -> Deleted:
        """Delete up to ``limit`` blobs no job has needed since before ``now``."""
        if self._take_expired is None:
            return Deleted()
        now = time.time() if now is None else now
        refs = [r.decode() for r in self._take_expired(keys=[INDEX], args=[now, limit])]
        if not refs:
            return Deleted()
        aside: dict[str, Path] = {}
        for ref in refs:
            if not is_blob_ref(ref):
                continue
            path = self.path(ref)
            moved = path.with_name(f".gone-{secrets.token_hex(4)}-{ref}")
            try:
                os.replace(path, moved)  # aside, not gone: a writer may claim it meanwhile
            except FileNotFoundError:
                continue
            aside[ref] = moved
        with self.index.pipeline(transaction=False) as pipe:
            for ref in aside:
                pipe.zscore(INDEX, ref)
            claimed = pipe.execute()
        count = size = 0
        for (ref, moved), score in zip(aside.items(), claimed, strict=True):
            if score is not None:  # saved or recorded again since it was taken off the index: it stays
                os.replace(moved, self.path(ref))
                continue
            size += moved.stat().st_size
            moved.unlink()
            count += 1
        return Deleted(count=count, bytes=size)

    def disk_bytes(self) -> int:
        """Bytes of every blob on disk (for reports; walks the folder)."""
        return sum(p.stat().st_size for p in self.root.glob("*/*") if p.is_file())
