"""Reading an ONNX model's signature without onnx or onnxruntime: its graph's inputs and outputs
(names, element types, shapes), found by walking the protobuf and seeking past everything else —
the weights (initializers) and the nodes are never read into memory.

The library tells a face detector from a face restorer with it, at listing time in the web app.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from workers.file_cache import FileCache

_CACHE_SIZE = 64
_MODEL_GRAPH, _MODEL_PRODUCER = 7, 2
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12
_TENSOR_NAME = 8
ELEM_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 2: "uint8", 3: "int8", 6: "int32", 7: "int64"}


class OnnxError(ValueError):
    """The file is not a readable ONNX model."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str                                # float32, float16 … (elem_type <n> when unknown)
    shape: tuple[int | str | None, ...]       # a number, a symbolic name, or None when unknown


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Tensor, ...]                # the graph's inputs, initializers left out
    outputs: tuple[Tensor, ...]
    producer: str = ""

    def output_names(self) -> set[str]:
        return {t.name for t in self.outputs}


_cache: FileCache[Signature] = FileCache(_CACHE_SIZE, error=OnnxError)


def read_signature(path: str | Path) -> Signature:
    """The inputs and outputs of the ONNX model at ``path``; cached by path, size and mtime."""
    return _cache.get(path, _read_signature)


def _read_signature(target: Path, size: int) -> Signature:
    try:
        with target.open("rb") as f:
            return _model(f, size)
    except OSError as e:
        raise OnnxError(f"cannot read {target}: {e.strerror or e}") from e
    except (EOFError, ValueError, UnicodeDecodeError) as e:
        raise OnnxError(f"{target.name} is not an ONNX model ({e})") from e


# --- the protobuf walk ------------------------------------------------------------------------------

def _varint(f: BinaryIO) -> int:
    result = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise EOFError("truncated")
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _fields(f: BinaryIO, end: int) -> Iterator[tuple[int, int | tuple[int, int]]]:
    """(field number, value) of a message ending at ``end``: a varint's value, or a length-delimited
    field's (start, length) — the caller may read it; the walk goes on after it either way."""
    while f.tell() < end:
        tag = _varint(f)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            yield number, _varint(f)
        elif wire == 1:
            f.seek(8, 1)
        elif wire == 5:
            f.seek(4, 1)
        elif wire == 2:
            length = _varint(f)
            start = f.tell()
            if start + length > end:
                raise ValueError("a field runs past its message")
            yield number, (start, length)
            f.seek(start + length)
        else:
            raise ValueError(f"wire type {wire}")


def _read(f: BinaryIO, span: tuple[int, int], *, limit: int = 1 << 20) -> bytes:
    start, length = span
    if length > limit:
        raise ValueError("a name or type field is implausibly large")
    f.seek(start)
    return f.read(length)


def _model(f: BinaryIO, size: int) -> Signature:
    graph, producer = None, ""
    for number, value in _fields(f, size):
        if number == _MODEL_GRAPH and isinstance(value, tuple):
            graph = value
        elif number == _MODEL_PRODUCER and isinstance(value, tuple):
            producer = _read(f, value).decode()
    if graph is None:
        raise ValueError("no graph")
    start, length = graph
    f.seek(start)
    inputs, outputs, initializers = [], [], set()
    for number, value in _fields(f, start + length):
        if not isinstance(value, tuple):
            continue
        if number == _GRAPH_INPUT:
            inputs.append(_value_info(f, value))
        elif number == _GRAPH_OUTPUT:
            outputs.append(_value_info(f, value))
        elif number == _GRAPH_INITIALIZER:
            f.seek(value[0])
            initializers |= {_read(f, v).decode() for n, v in _fields(f, sum(value))
                             if n == _TENSOR_NAME and isinstance(v, tuple)}
    if not outputs:
        raise ValueError("a graph without outputs")
    return Signature(inputs=tuple(t for t in inputs if t.name not in initializers), outputs=tuple(outputs),
                     producer=producer)


def _value_info(f: BinaryIO, span: tuple[int, int]) -> Tensor:
    name, dtype, shape = "", "unknown", ()
    f.seek(span[0])
    for number, value in _fields(f, sum(span)):
        if number == 1 and isinstance(value, tuple):
            name = _read(f, value).decode()
        elif number == 2 and isinstance(value, tuple):  # TypeProto → tensor_type (1)
            f.seek(value[0])
            for n, tensor in _fields(f, sum(value)):
                if n == 1 and isinstance(tensor, tuple):
                    dtype, shape = _tensor_type(f, tensor)
    return Tensor(name=name, dtype=dtype, shape=shape)


def _tensor_type(f: BinaryIO, span: tuple[int, int]) -> tuple[str, tuple[int | str | None, ...]]:
    dtype, dims = "unknown", []
    f.seek(span[0])
    for number, value in _fields(f, sum(span)):
        if number == 1 and isinstance(value, int):
            dtype = ELEM_TYPES.get(value, f"elem_type {value}")
        elif number == 2 and isinstance(value, tuple):  # TensorShapeProto → dim (1)
            f.seek(value[0])
            for n, dim in _fields(f, sum(value)):
                if n == 1 and isinstance(dim, tuple):
                    dims.append(_dimension(f, dim))
    return dtype, tuple(dims)


def _dimension(f: BinaryIO, span: tuple[int, int]) -> int | str | None:
    f.seek(span[0])
    for number, value in _fields(f, sum(span)):
        if number == 1 and isinstance(value, int):
            return value
        if number == 2 and isinstance(value, tuple):
            return _read(f, value).decode()
    return None
