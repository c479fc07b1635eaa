"""Latents on Redis as safetensors bytes (never pickle), every key with a TTL.

A latent's reference is ``<scope token>:<latent key>``; its Redis key is
``pixelmill:cache:<scope token>:latent:<latent key>``. A Redis error makes the cache a miss,
never a failed job; an entry larger than ``max_bytes`` is not stored.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import redis
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from cache.backend import Backend, cache_key

log = logging.getLogger(__name__)

LEGACY_PREFIX = "pixelmill:latent"
UNCACHED = "uncached-"  # the key of a reference no lookup computes (cache.service)


def make_ref(scope_token: str, key: str) -> str:
    return f"{scope_token}:{key}"


def is_shareable(ref: str) -> bool:
    """False for a latent kept only in one worker (not cached: too large, or Redis was down)."""
    return not ref.rpartition(":")[2].startswith(UNCACHED)


def latent_redis_key(ref: str) -> str:
    """The Redis key of a latent reference (a pre-scope bare key maps to the old prefix)."""
    token, _, key = ref.rpartition(":")
    if not token:
        return f"{LEGACY_PREFIX}:{key}"
    return cache_key(token, "latent", key)


def to_numpy(latent: Any) -> np.ndarray:
    if hasattr(latent, "detach"):
        latent = latent.detach().to("cpu").float().numpy()
    return np.ascontiguousarray(latent)


def encode_latent(latent: Any) -> bytes:
    return st_save({"latent": to_numpy(latent)})


class LatentStore:
    def __init__(self, client: redis.Redis | Backend, *, ttl_s: int, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.backend = client if isinstance(client, Backend) else Backend(client)
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes

    @property
    def client(self) -> redis.Redis:
        return self.backend.client

    def save(self, ref: str, latent: Any) -> bool:
        """Store a latent; False (and nothing stored) when it is too large or Redis is down."""
        return self.save_bytes(ref, encode_latent(latent))

    def save_bytes(self, ref: str, data: bytes) -> bool:
        if len(data) > self.max_bytes:
            log.info("latent %s is %d bytes, over the cache limit of %d; not cached", ref, len(data), self.max_bytes)
            return False
        return bool(self.backend.call("save latent", lambda r: r.set(latent_redis_key(ref), data, ex=self.ttl_s), False))

    def fetch(self, ref: str) -> np.ndarray | None:
        data = self.backend.call("fetch latent", lambda r: r.get(latent_redis_key(ref)), None)
        if data is None:
            return None
        try:
            return st_load(data)["latent"]
        except Exception as e:  # noqa: BLE001 — a corrupt entry is a miss, and is removed
            log.warning("latent %s could not be decoded (%s); dropping it", ref, e)
            self.backend.call("drop latent", lambda r: r.delete(latent_redis_key(ref)), None)
            return None

    def fetch_bytes(self, ref: str) -> bytes | None:
        return self.backend.call("fetch latent", lambda r: r.get(latent_redis_key(ref)), None)

    def exists(self, ref: str) -> bool:
        return bool(self.backend.call("latent exists", lambda r: r.exists(latent_redis_key(ref)), 0))
