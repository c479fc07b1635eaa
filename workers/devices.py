"""Choosing the torch device and dtype an engine runs on."""

from __future__ import annotations

import re

import torch

from workers.errors import EngineError

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
_CUDA = re.compile(r"cuda(?::(\d+))?")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _check_cuda(device: str, index: str | None) -> str:
    if not torch.cuda.is_available():
        raise EngineError(
            f"device {device!r} was asked for but this machine has no usable CUDA GPU; use 'cpu' or 'auto'"
        )
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise EngineError(
            f"device {device!r} does not exist: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})"
        )
    return device


def pick_device(preference: str = "auto") -> str:
    """Return a torch device string for `preference` ("auto", "cpu", "cuda", "cuda:N" or "mps")."""
    wanted = preference.strip().lower()
    if wanted == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if wanted == "cpu":
        return "cpu"
    if wanted == "mps":
        if not _mps_available():
            raise EngineError("device 'mps' was asked for but Apple MPS is not available here; use 'cpu' or 'auto'")
        return "mps"
    cuda = _CUDA.fullmatch(wanted)
    if cuda is not None:
        return _check_cuda(wanted, cuda.group(1))
    raise EngineError(f"unknown device {preference!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def default_dtype(device: str, preference: str = "auto") -> torch.dtype:
    """Return the dtype for `device`: fp16 on cuda/mps and fp32 on cpu for "auto", else the named one."""
    wanted = preference.strip().lower()
    if wanted == "auto":
        return torch.float16 if device.startswith(("cuda", "mps")) else torch.float32
    try:
        return _DTYPES[wanted]
    except KeyError:
        raise EngineError(f"unknown dtype {preference!r}: use 'auto', 'fp32', 'fp16' or 'bf16'") from None


def dtype_name(dtype: torch.dtype) -> str:
    """Return the short name ("fp32", "fp16", "bf16") of a supported dtype."""
    for name, known in _DTYPES.items():
        if known == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}; expected one of {', '.join(_DTYPES)}")
