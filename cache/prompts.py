"""Prompt embeddings on Redis as safetensors bytes (never pickle), every key with a TTL: the text
encoder's outputs for a prompt and its negative, so a repeated prompt skips the text encoder.

Its Redis key is ``pixelmill:cache:<scope token>:prompt:<key>`` (cache.keys.PromptSpec), in the
scope of the job, like latents: a scope's clear removes them. A Redis error is a miss.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from cache.backend import Backend, cache_key
from cache.latents import to_numpy

log = logging.getLogger(__name__)

NAMES = ("prompt", "negative")


def encode_embeds(tensors: dict[str, Any]) -> bytes:
    """Both embeddings as float32 safetensors bytes (fp16 and bf16 round-trip exactly through fp32)."""
    return st_save({name: to_numpy(tensors[name]).astype(np.float32, copy=False) for name in NAMES})


class PromptStore:
    def __init__(self, backend: Backend, *, ttl_s: int, max_bytes: int) -> None:
        self.backend, self.ttl_s, self.max_bytes = backend, ttl_s, max_bytes

    def save_bytes(self, *, token: str, key: str, data: bytes) -> bool:
        if len(data) > self.max_bytes:
            return False
        return bool(self.backend.call("save prompt", lambda r: r.set(cache_key(token, "prompt", key), data,
                                                                     ex=self.ttl_s), False))

    def fetch(self, *, token: str, key: str) -> dict[str, np.ndarray] | None:
        data = self.backend.call("fetch prompt", lambda r: r.get(cache_key(token, "prompt", key)), None)
        if data is None:
            return None
        try:
            arrays = st_load(data)
            return {name: arrays[name] for name in NAMES}
        except Exception as e:  # noqa: BLE001 — a corrupt entry is a miss, and is removed
            log.warning("prompt embedding %s could not be decoded (%s); dropping it", key, e)
            self.backend.call("drop prompt", lambda r: r.delete(cache_key(token, "prompt", key)), None)
            return None


class ControlMapStore:
    """Control maps by content: key → the blob reference of the map (the blob store keeps the PNG)."""

    def __init__(self, backend: Backend, *, ttl_s: int) -> None:
        self.backend, self.ttl_s = backend, ttl_s

    def fetch(self, *, token: str, key: str) -> str | None:
        raw = self.backend.call("fetch control map", lambda r: r.get(cache_key(token, "control", key)), None)
        return raw.decode() if raw else None

    def save(self, *, token: str, key: str, ref: str) -> bool:
        return bool(self.backend.call("save control map", lambda r: r.set(cache_key(token, "control", key), ref,
                                                                          ex=self.ttl_s), False))

    def drop(self, *, token: str, key: str) -> None:
        self.backend.call("drop control map", lambda r: r.delete(cache_key(token, "control", key)), None)
