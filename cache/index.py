"""The near-duplicate index: pHash buckets by multi-index hashing, in Redis, per scope and encoder.

For each entry the index keeps its fingerprint (``…:fp:<latent key>``, safetensors bytes) and,
for each of the ``radius + 1`` chunks of its pHash, a member ``<phash hex>:<latent key>`` in the
set ``…:mih:<encoder signature>:<chunk index>:<chunk value>``. A lookup reads those sets, keeps
the members within ``radius`` bits, and confirms each by comparing fingerprints. Every key has a
TTL; a member whose fingerprint has expired is skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from cache.backend import Backend, cache_key
from cache.errors import BadCacheEntry
from cache.fingerprint import Fingerprint, Similarity, Tolerance, chunks, compare, hamming

log = logging.getLogger(__name__)

MAX_CANDIDATES = 32  # confirm at most this many bucket neighbours, nearest pHash first


@dataclass(frozen=True)
class Match:
    key: str               # the matching entry's latent key
    similarity: Similarity


class NearDuplicateIndex:
    def __init__(self, backend: Backend, *, ttl_s: int, radius: int, tolerance: Tolerance = Tolerance()) -> None:
        chunks(0, radius=radius)  # validates the radius
        self.backend = backend
        self.ttl_s = ttl_s
        self.radius = radius
        self.tolerance = tolerance

    def _bucket_keys(self, token: str, encoder: str, phash: int) -> list[str]:
        return [cache_key(token, "mih", encoder, str(i), format(v, "x")) for i, v in chunks(phash, radius=self.radius)]

    def add(self, *, token: str, encoder: str, key: str, fp: Fingerprint) -> bool:
        member = f"{fp.phash:016x}:{key}"
        data = fp.to_bytes()

        def write(r: redis.Redis) -> bool:
            with r.pipeline(transaction=True) as pipe:
                pipe.set(cache_key(token, "fp", key), data, ex=self.ttl_s)
                for bucket in self._bucket_keys(token, encoder, fp.phash):
                    pipe.sadd(bucket, member)
                    pipe.expire(bucket, self.ttl_s)
                pipe.execute()
            return True

        return self.backend.call("index add", write, False)

    def find(self, *, token: str, encoder: str, fp: Fingerprint) -> list[Match]:
        """Entries that are the same picture as ``fp`` (nearest first); [] on a miss or outage."""
        buckets = self._bucket_keys(token, encoder, fp.phash)

        def read_members(r: redis.Redis) -> list[set[bytes]]:
            with r.pipeline(transaction=False) as pipe:
                for bucket in buckets:
                    pipe.smembers(bucket)
                return pipe.execute()

        near: dict[str, int] = {}
        phashes: dict[str, int] = {}
        for members in self.backend.call("index find", read_members, []):
            for raw in members:
                phash_hex, _, key = raw.decode().partition(":")
                phashes[key] = int(phash_hex, 16)
                distance = hamming(phashes[key], fp.phash)
                if distance <= self.radius:
                    near[key] = distance
        if not near:
            return []
        keys = sorted(near, key=near.__getitem__)[:MAX_CANDIDATES]
        blobs = self.backend.call("index fetch", lambda r: r.mget([cache_key(token, "fp", k) for k in keys]), None)
        if blobs is None:
            return []
        matches, stale = [], []
        for key, blob in zip(keys, blobs, strict=True):
            if blob is None:
                stale.append(key)  # its fingerprint expired or was cleared
                continue
            try:
                other = Fingerprint.from_bytes(blob)
            except BadCacheEntry as e:
                log.warning("%s (entry %s); ignoring it", e, key)
                continue
            similarity = compare(fp, other, tolerance=self.tolerance)
            if similarity.same:
                matches.append(Match(key=key, similarity=similarity))
        if stale:
            self._forget(token, encoder, {key: phashes[key] for key in stale})
        matches.sort(key=lambda m: (m.similarity.score, m.similarity.distance))
        return matches

    def _forget(self, token: str, encoder: str, entries: dict[str, int]) -> None:
        """Remove members whose fingerprint is gone, so that busy buckets do not grow forever."""

        def remove(r: redis.Redis) -> None:
            with r.pipeline(transaction=False) as pipe:
                for key, phash in entries.items():
                    for bucket in self._bucket_keys(token, encoder, phash):
                        pipe.srem(bucket, f"{phash:016x}:{key}")
                pipe.execute()

        self.backend.call("index forget", remove, None)
