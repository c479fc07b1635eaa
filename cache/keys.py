"""Cache keys are content signatures: sha256 of canonical sorted JSON of everything that
changes the output, plus the upstream key (ComfyUI's idea). Anything unseeded or impure is
never cached.

Two keys live here:

* the **latent key** — what an image looks like (its normalised pixels) and what encodes it
  (model, VAE revision, dtype, target resolution, crop, rotation), in a scope;
* the **result key** — a latent reference plus every parameter of generation, seed included.

Prompt, negative prompt, guidance, steps, strength and seed are deliberately *not* part of the
latent key: a new prompt on the same photo reuses the latent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class EncoderSpec:
    """Everything besides the pixels that changes a latent.

    ``size`` is the requested working size (the longer side); the exact normalised shape is
    part of the latent key through the pixels digest, and near-duplicates may differ from it
    by one latent cell (see cache.fingerprint).
    """

    model: str
    revision: str | None
    dtype: str
    size: int
    crop: str = "resize"
    rotation: int = 0

    def signature(self) -> str:
        return signature({"kind": "encoder", **asdict(self)})


def latent_key(*, pixels: str, model: str, revision: str | None, size: tuple[int, int] | int,
               dtype: str, scope: str, crop: str = "resize", rotation: int = 0) -> str:
    """The key of a VAE latent: what the image looks like and what encodes it, in a scope.

    Prompt, guidance, steps, strength and seed are deliberately absent: a new prompt on the
    same photo reuses the latent.
    """
    return signature({
        "pixels": pixels, "model": model, "revision": revision,
        "size": list(size) if isinstance(size, tuple | list) else size,
        "dtype": dtype, "scope": scope, "crop": crop, "rotation": rotation,
    })


def latent_key_for(spec: EncoderSpec, *, pixels: str, shape: tuple[int, int], scope: str) -> str:
    """``latent_key`` for an encoder spec and a normalised image of ``shape`` (height, width)."""
    return latent_key(pixels=pixels, model=spec.model, revision=spec.revision, size=(spec.size, *shape),
                      dtype=spec.dtype, scope=scope, crop=spec.crop, rotation=spec.rotation)


def result_key(*, latent_ref: str, model: str, revision: str | None, dtype: str,
               params: dict[str, Any]) -> str | None:
    """The key of a generated image: the latent it starts from and every generation parameter.

    Returns None when the run is not reproducible (no seed): an unseeded run is never cached.
    """
    if params.get("seed") is None:
        return None
    return signature({"kind": "result", "latent": latent_ref, "model": model, "revision": revision,
                      "dtype": dtype, "params": params})


@dataclass(frozen=True)
class PromptSpec:
    """Everything that changes a prompt's text-encoder output: the model (and revision), the text
    encoder's dtype, both prompts, clip_skip and the LoRAs that adapt the text encoder (name,
    fingerprint, weight) — in order, as they are applied."""

    model: str
    revision: str | None
    dtype: str
    prompt: str
    negative_prompt: str
    clip_skip: int = 0
    text_loras: tuple[tuple[str, str, float], ...] = ()

    def key(self, *, generation: str) -> str:
        """The entry's key in a scope at a generation (a cleared scope starts a new one)."""
        fields = asdict(self) | {"text_loras": [list(item) for item in self.text_loras]}
        return signature({"kind": "prompt", "generation": generation, **fields})


def control_key(*, pixels: str, kind: str, annotator: str, shape: tuple[int, ...]) -> str:
    """The key of a control map: the normalised image's pixels, the map kind and what computes it
    (an algorithm version, or the depth model and its fingerprint)."""
    return signature({"kind": "control", "pixels": pixels, "map": kind, "annotator": annotator,
                      "shape": list(shape)})
