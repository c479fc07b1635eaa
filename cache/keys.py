"""Cache keys are content signatures: sha256 of canonical sorted JSON of everything that
changes the output (ComfyUI's idea). Anything unseeded or impure is never cached."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def signature(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``fields`` (sorted keys, no whitespace)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def pixels_digest(image: np.ndarray) -> str:
    """sha256 of a normalised image's pixels and shape (not of its file bytes)."""
    h = hashlib.sha256(f"{image.shape}|{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def latent_key(*, pixels: str, model: str, revision: str | None, size: tuple[int, int],
               dtype: str, scope: str, crop: str = "center", rotation: int = 0) -> str:
    """The key of a VAE latent: what the image looks like and what encodes it.

    Prompt, guidance, steps, strength and seed are deliberately absent: a new prompt on the
    same photo reuses the latent.
    """
    return signature({
        "pixels": pixels, "model": model, "revision": revision, "size": list(size),
        "dtype": dtype, "scope": scope, "crop": crop, "rotation": rotation,
    })
