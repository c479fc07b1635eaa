"""Latents on Redis as safetensors bytes (never pickle), every key with a TTL.

A Redis error makes the cache a miss, never a failed job.
"""

from __future__ import annotations

import logging

import numpy as np
import redis
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

log = logging.getLogger(__name__)

PREFIX = "pixelmill:latent"


def key_for(key: str) -> str:
    return f"{PREFIX}:{key}"


class LatentStore:
    def __init__(self, client: redis.Redis, *, ttl_s: int, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes

    def save(self, key: str, latent: np.ndarray) -> bool:
        """Store a latent; returns False (and stores nothing) when it is too large or Redis is down."""
        data = st_save({"latent": np.ascontiguousarray(latent)})
        if len(data) > self.max_bytes:
            return False
        try:
            self.redis.set(key_for(key), data, ex=self.ttl_s)
        except redis.RedisError as e:
            log.warning("latent cache unavailable, not storing %s: %s", key, e)
            return False
        return True

    def fetch(self, key: str) -> np.ndarray | None:
        try:
            data = self.redis.get(key_for(key))
        except redis.RedisError as e:
            log.warning("latent cache unavailable, treating %s as a miss: %s", key, e)
            return None
        if data is None:
            return None
        return st_load(data)["latent"]

    def exists(self, key: str) -> bool:
        try:
            return bool(self.redis.exists(key_for(key)))
        except redis.RedisError:
            return False
