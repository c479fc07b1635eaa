"""Reading a .safetensors file's header without torch: 8 bytes of little-endian length, then that
many bytes of JSON naming every tensor with its dtype and shape (and ``__metadata__``).

The web app validates models at submit with it (shapes, layouts) and never loads a weight.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.file_cache import FileCache

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_CACHE_SIZE = 256


class HeaderError(ValueError):
    """The file is not a readable .safetensors file."""


@dataclass(frozen=True)
class Header:
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]

    def keys(self) -> list[str]:
        return list(self.shapes)


_cache: FileCache[Header] = FileCache(_CACHE_SIZE, error=HeaderError)


def read_header(path: str | Path) -> Header:
    """The tensors' names and shapes and the metadata of ``path``; cached by path, size and mtime."""
    return _cache.get(path, lambda target, size: _parse(target, size=size))


def _parse(path: Path, *, size: int) -> Header:
    try:
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise HeaderError(f"{path.name} is too short to be a .safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise HeaderError(f"{path.name} is not a .safetensors file (header length {length})")
            raw = f.read(length)
    except OSError as e:
        raise HeaderError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        data: dict[str, Any] = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeaderError(f"{path.name} is not a .safetensors file (its header is not JSON)") from e
    if not isinstance(data, dict):
        raise HeaderError(f"{path.name} is not a .safetensors file (its header is not a JSON object)")
    metadata = data.pop("__metadata__", None) or {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in data.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list):
            raise HeaderError(f"{path.name}: tensor {name!r} has no shape in the header")
        shapes[name] = tuple(int(n) for n in shape)
    return Header(shapes=shapes, metadata={str(k): str(v) for k, v in metadata.items()})
