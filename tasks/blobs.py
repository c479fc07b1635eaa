"""Content-addressed blob store on disk: a blob's name is the sha256 of its bytes.

Writing is idempotent (same bytes, same ref) and atomic (write to a temp file, then rename),
so a re-run stage or two workers writing the same result never leave a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from tasks.errors import PixelmillError

_REF = re.compile(r"^[0-9a-f]{64}\.(png|jpg|webp)$")


class BlobNotFound(PixelmillError):
    code = "blob_not_found"
    status = 404


class BlobStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def save(self, data: bytes, *, ext: str = "png") -> str:
        ref = f"{hashlib.sha256(data).hexdigest()}.{ext}"
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
