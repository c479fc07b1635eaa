"""The latent cache as the stages use it: hot tier → Redis (exact, then near-duplicate) → compute
once (single-flight) → store; latents fetched hot-first; whole results; counters; clearing.

Everything a stage needs is a method here, testable with a real Redis and no broker.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cache import scopes
from cache.backend import Backend, cache_key
from cache.errors import CacheConfigError
from cache.fingerprint import Fingerprint, Tolerance, fingerprint
from cache.hot import HotTier, nbytes
from cache.index import NearDuplicateIndex
from cache.keys import EncoderSpec, PromptSpec, latent_key_for, signature
from cache.latents import UNCACHED, LatentStore, encode_latent, make_ref
from cache.prompts import ControlMapStore, PromptStore, encode_embeds
from cache.results import ResultStore, StoredResult
from cache.scopes import Scope
from cache.singleflight import SingleFlight
from cache.stats import CacheStats, Event

if TYPE_CHECKING:  # torch loads only where latents are computed or moved (workers), not in web or io
    import torch

log = logging.getLogger(__name__)

GENERATION_TTL_S = 30 * 24 * 3600
OFFLINE = "offline"  # the generation while Redis is down: such refs are never looked up


@dataclass(frozen=True)
class CacheConfig:
    latent_ttl_s: int = 24 * 3600
    result_ttl_s: int = 24 * 3600
    hot_bytes: int = 256 * 1024 * 1024
    max_entry_bytes: int = 16 * 1024 * 1024
    hash_radius: int = 6
    singleflight_timeout_s: float = 180.0
    lock_ttl_s: float = 30.0
    tolerance: Tolerance = field(default_factory=Tolerance)

    def validate(self) -> None:
        for name in ("latent_ttl_s", "result_ttl_s"):
            if getattr(self, name) <= 0:
                raise CacheConfigError(f"{name} must be positive: every cache key carries a TTL (PIXELMILL_{name.upper()})")
        if not 0 <= self.hash_radius <= 15:
            raise CacheConfigError(f"cache_hash_radius must be between 0 and 15, got {self.hash_radius} "
                                   "(PIXELMILL_CACHE_HASH_RADIUS)")


@dataclass(frozen=True)
class EncodeOutcome:
    """What the encode-side lookup did, as the job records it."""

    ref: str
    cached: bool
    tier: str | None = None        # hot | redis — where the latent was found
    match: str | None = None       # exact | near
    distance: int | None = None    # pHash bits, for a near match
    waited_s: float = 0.0          # time spent waiting on another worker's encode
    stored_bytes: int = 0
    note: str | None = None
    latent: Any = None             # the computed latent (on a miss)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"tier": self.tier, "match": self.match}
        if self.distance is not None:
            info["distance"] = self.distance
        if self.waited_s:
            info["waited_s"] = round(self.waited_s, 3)
        if self.stored_bytes:
            info["stored_bytes"] = self.stored_bytes
        if self.note:
            info["note"] = self.note
        return info


@dataclass(frozen=True)
class PromptOutcome:
    """A prompt's text-encoder outputs ({"prompt", "negative"}) and where they came from."""

    tensors: dict[str, Any]
    tier: str | None = None  # hot | redis; None: the text encoder ran
    stored_bytes: int = 0


class LatentCache:
    def __init__(self, backend: Backend, *, config: CacheConfig) -> None:
        config.validate()
        self.backend = backend
        self.config = config
        self.hot = HotTier(max_bytes=config.hot_bytes)
        self.latents = LatentStore(backend, ttl_s=config.latent_ttl_s, max_bytes=config.max_entry_bytes)
        self.index = NearDuplicateIndex(backend, ttl_s=config.latent_ttl_s, radius=config.hash_radius,
                                        tolerance=config.tolerance)
        self.flight = SingleFlight(backend, timeout_s=config.singleflight_timeout_s, lock_ttl_s=config.lock_ttl_s)
        self.results = ResultStore(backend, ttl_s=config.result_ttl_s)
        self.prompts = PromptStore(backend, ttl_s=config.latent_ttl_s, max_bytes=config.max_entry_bytes)
        self.controls = ControlMapStore(backend, ttl_s=config.latent_ttl_s)
        self.stats = CacheStats(backend)

    # --- scopes ---------------------------------------------------------------------------
    def generation(self, scope: Scope) -> str | None:
        """The scope's current generation (changed by clear()); None when Redis is down."""
        missing = object()
        raw = self.backend.call("generation", lambda r: r.getex(_generation_key(scope), ex=GENERATION_TTL_S), missing)
        if raw is missing:
            return None
        return raw.decode() if raw else "0"

    def clear(self, scope: Scope) -> int | None:
        """Forget every entry of ``scope``: a new generation (so no worker's hot tier serves an old
        entry again), then the scope's Redis keys. Returns the keys deleted; None if Redis is down."""
        new = secrets.token_hex(8)
        if not self.backend.call("clear", lambda r: r.set(_generation_key(scope), new, ex=GENERATION_TTL_S), False):
            return None
        self.hot.drop_prefix(f"{scope.token}:")
        return scopes.clear_scope(self.backend, scope)

    def entries(self, scope: Scope) -> dict[str, int | None]:
        return {kind: scopes.count_entries(self.backend, scope, kind=kind)
                for kind in ("latent", "result", "prompt", "control")}

    # --- encode ---------------------------------------------------------------------------
    def fetch_or_compute(self, image: np.ndarray, *, spec: EncoderSpec, scope: Scope,
                         compute: Callable[[], torch.Tensor], device: str = "cpu",
                         expected_bytes: int | None = None, stage: str = "encode") -> EncodeOutcome:
        """The latent of a normalised ``image``: from the cache when it (or a near-duplicate) is
        there, else ``compute()``d once across workers and stored."""
        fp = fingerprint(image)
        generation = self.generation(scope)
        if generation is None:  # Redis is down: no lookups, nothing stored; the hot tier still feeds generate
            ref = self._ref(fp, spec=spec, scope=scope, generation=OFFLINE)
            return self._uncached(ref, compute(), device=device, note="cache unavailable")

        ref = self._ref(fp, spec=spec, scope=scope, generation=generation)
        events: list[Event] = []
        try:
            return self._lookup_or_compute(fp, ref=ref, spec=spec, scope=scope, generation=generation,
                                           compute=compute, device=device, expected_bytes=expected_bytes,
                                           stage=stage, events=events)
        finally:
            self.stats.record(events, scope_token=scope.token)

    def _lookup_or_compute(self, fp: Fingerprint, *, ref: str, spec: EncoderSpec, scope: Scope, generation: str,
                           compute: Callable[[], torch.Tensor], device: str, expected_bytes: int | None,
                           stage: str, events: list[Event]) -> EncodeOutcome:
        def hit(tier: str, **info: Any) -> EncodeOutcome:
            events.extend([Event(stage, tier, "hits"), Event(stage, "lookup", "hits")])
            return EncodeOutcome(ref=info.pop("ref", ref), cached=True, tier=tier, **info)

        if self.hot.get(ref) is not None:
            return hit("hot", match="exact")
        events.append(Event(stage, "hot", "misses"))
        if self.latents.exists(ref):
            return hit("redis", match="exact")
        encoder = signature({"encoder": spec.signature(), "generation": generation})
        for match in self.index.find(token=scope.token, encoder=encoder, fp=fp):
            near_ref = make_ref(scope.token, match.key)
            if self.hot.get(near_ref) is not None:
                events.append(Event(stage, "redis", "misses"))  # the exact key missed in Redis
                return hit("hot", ref=near_ref, match="near", distance=match.similarity.distance)
            if self.latents.exists(near_ref):
                return hit("redis", ref=near_ref, match="near", distance=match.similarity.distance)
        events.append(Event(stage, "redis", "misses"))

        if expected_bytes is not None and expected_bytes > self.config.max_entry_bytes:
            events.extend([Event(stage, "redis", "too_large"), Event(stage, "lookup", "misses")])
            return self._uncached(ref, compute(), device=device,
                                  note=f"not cached: about {expected_bytes} bytes, over the "
                                       f"{self.config.max_entry_bytes}-byte limit")

        def compute_and_store() -> tuple[torch.Tensor, int]:
            latent = compute()
            data = encode_latent(latent)
            if len(data) > self.config.max_entry_bytes:
                return latent, -len(data)
            stored = len(data) if self.latents.save_bytes(ref, data) else 0
            if stored:
                self.index.add(token=scope.token, encoder=encoder, key=ref.rpartition(":")[2], fp=fp)
            self.hot.put(ref, _on(latent, device))
            return latent, stored

        flight = self.flight.run(self.lock_key(ref),
                                 compute=compute_and_store, ready=lambda: self.latents.exists(ref))
        if not flight.computed:  # another worker computed it while we waited: the stage skipped its encode
            events.extend([Event(stage, "redis", "waited"), Event(stage, "lookup", "hits")])
            return EncodeOutcome(ref=ref, cached=True, tier="redis", match="exact", waited_s=flight.waited_s)
        latent, stored = flight.value
        events.append(Event(stage, "lookup", "misses"))
        if stored < 0:
            events.append(Event(stage, "redis", "too_large"))
            return self._uncached(ref, latent, device=device, note=f"not cached: {-stored} bytes, over the "
                                                                   f"{self.config.max_entry_bytes}-byte limit")
        if stored:
            events.append(Event(stage, "redis", "bytes_stored", stored))
        return EncodeOutcome(ref=ref, cached=False, stored_bytes=stored, waited_s=flight.waited_s, latent=latent,
                       note=None if stored else "not cached: Redis refused it")

    def _uncached(self, ref: str, latent: torch.Tensor, *, device: str, note: str) -> EncodeOutcome:
        """A latent that is not cached: kept in this worker's hot tier under a reference no lookup
        computes, so that this job's generate (if it runs here) need not encode again."""
        token, _, key = ref.rpartition(":")
        private = make_ref(token, f"{UNCACHED}{secrets.token_hex(4)}-{key}")
        self.hot.put(private, _on(latent, device))
        return EncodeOutcome(ref=private, cached=False, note=note, latent=latent)

    def ref_for(self, image: np.ndarray, *, spec: EncoderSpec, scope: Scope) -> str | None:
        """The exact reference a lookup of ``image`` computes now; None when Redis is down."""
        generation = self.generation(scope)
        return None if generation is None else self._ref(fingerprint(image), spec=spec, scope=scope,
                                                         generation=generation)

    @staticmethod
    def lock_key(ref: str) -> str:
        """The single-flight lock of a reference."""
        token, _, key = ref.rpartition(":")
        return cache_key(token, "lock", key)

    def _ref(self, fp: Fingerprint, *, spec: EncoderSpec, scope: Scope, generation: str) -> str:
        key = latent_key_for(spec, pixels=fp.digest, shape=fp.shape, scope=f"{scope.name}@{generation}")
        return make_ref(scope.token, key)

    # --- generate -------------------------------------------------------------------------
    def fetch_latent(self, ref: str, *, scope_token: str, device: str = "cpu",
                     stage: str = "generate") -> tuple[torch.Tensor | None, str | None]:
        """The latent for ``ref``, hot tier first; (None, None) when it is gone."""
        events: list[Event] = []
        try:
            tensor = self.hot.get(ref)
            if tensor is not None:
                events.append(Event(stage, "hot", "hits"))
                events.append(Event(stage, "hot", "bytes_served", nbytes(tensor)))
                return tensor, "hot"
            events.append(Event(stage, "hot", "misses"))
            array = self.latents.fetch(ref)
            if array is None:
                events.append(Event(stage, "redis", "misses"))
                return None, None
            events.extend([Event(stage, "redis", "hits"), Event(stage, "redis", "bytes_served", int(array.nbytes))])
            import torch

            tensor = _on(torch.from_numpy(np.array(array)), device)
            self.hot.put(ref, tensor)
            return tensor, "redis"
        finally:
            self.stats.record(events, scope_token=scope_token)

    # --- whole results --------------------------------------------------------------------
    def fetch_result(self, key: str, *, scope_token: str, is_usable: Callable[[StoredResult], bool],
                     stage: str = "generate") -> StoredResult | None:
        """A stored result for ``key`` that ``is_usable`` (e.g. its blob still exists), else None."""
        return self._fetch_usable(self.results, key, scope_token=scope_token, is_usable=is_usable, stage=stage,
                                  tier="results")

    def save_result(self, key: str, *, scope_token: str, generated: str, job_id: str) -> bool:
        return self.results.save(token=scope_token, key=key, generated=generated, job_id=job_id)

    # --- prompt embeddings ----------------------------------------------------------------
    def fetch_or_compute_prompt(self, spec: PromptSpec, *, scope: Scope, compute: Callable[[], dict[str, Any]],
                                device: str = "cpu", stage: str = "prompt") -> PromptOutcome:
        """A prompt's text-encoder outputs: hot tier, then Redis, else ``compute()`` (a dict of the
        "prompt" and "negative" tensors) and store them in both, with the latents' TTL and budget."""
        generation = self.generation(scope) or OFFLINE
        key = spec.key(generation=generation)
        ref = make_ref(scope.token, f"prompt-{key}")
        events: list[Event] = []
        try:
            stacked = self.hot.get(ref)
            if stacked is not None:
                events.extend([Event(stage, "hot", "hits"), Event(stage, "lookup", "hits")])
                return PromptOutcome(tensors={"prompt": stacked[0:1], "negative": stacked[1:2]}, tier="hot")
            events.append(Event(stage, "hot", "misses"))
            arrays = self.prompts.fetch(token=scope.token, key=key) if generation != OFFLINE else None
            if arrays is not None:
                import torch

                tensors = {name: _on(torch.from_numpy(np.array(a)), device) for name, a in arrays.items()}
                self.hot.put(ref, torch.cat([tensors["prompt"], tensors["negative"]]))
                served = sum(int(a.nbytes) for a in arrays.values())
                events.extend([Event(stage, "redis", "hits"), Event(stage, "redis", "bytes_served", served),
                               Event(stage, "lookup", "hits")])
                return PromptOutcome(tensors=tensors, tier="redis")
            events.extend([Event(stage, "redis", "misses"), Event(stage, "lookup", "misses")])
            tensors = compute()
            import torch

            self.hot.put(ref, torch.cat([tensors["prompt"], tensors["negative"]]))
            data = encode_embeds(tensors)
            stored = len(data) if generation != OFFLINE and self.prompts.save_bytes(
                token=scope.token, key=key, data=data) else 0
            if stored:
                events.append(Event(stage, "redis", "bytes_stored", stored))
            return PromptOutcome(tensors=tensors, stored_bytes=stored)
        finally:
            self.stats.record(events, scope_token=scope.token)

    # --- control maps ---------------------------------------------------------------------
    def fetch_control(self, key: str, *, scope_token: str, is_usable: Callable[[str], bool],
                      stage: str = "control") -> str | None:
        """The blob reference of a control map computed before from the same pixels, else None."""
        return self._fetch_usable(self.controls, key, scope_token=scope_token, is_usable=is_usable, stage=stage,
                                  tier="redis")

    def save_control(self, key: str, *, scope_token: str, ref: str) -> bool:
        return self.controls.save(token=scope_token, key=key, ref=ref)

    def _fetch_usable(self, store: Any, key: str, *, scope_token: str, is_usable: Callable[[Any], bool],
                      stage: str, tier: str) -> Any:
        """What ``store`` holds for ``key`` when ``is_usable`` says it still is (else it is dropped:
        None), counted as a hit or a miss of ``tier`` and of the lookup."""
        found = store.fetch(token=scope_token, key=key)
        if found is not None and not is_usable(found):
            store.drop(token=scope_token, key=key)
            found = None
        counter = "hits" if found else "misses"
        self.stats.record([Event(stage, tier, counter), Event(stage, "lookup", counter)], scope_token=scope_token)
        return found


def _generation_key(scope: Scope) -> str:
    return f"{scopes.PREFIX}:gen:{scope.token}"


def _on(tensor: Any, device: str) -> Any:
    return tensor.to(device) if hasattr(tensor, "to") and str(getattr(tensor, "device", device)) != device else tensor
