"""Hits, misses and bytes per tier and per stage, counted in Redis hashes for every worker.

Fields are ``<stage>:<tier>:<counter>``: tiers ``hot`` (in-worker), ``redis`` (latents and the
near-duplicate index), ``results`` (whole results); ``<stage>:lookup:…`` counts each stage's
lookups once, whatever tier answered. Counting never fails a job: a Redis fault drops the count.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import redis

from cache.backend import Backend, stats_key

TIERS = ("hot", "redis", "results")
COUNTERS = ("hits", "misses", "bytes_served", "bytes_stored", "too_large", "waited")
STATS_TTL_S = 30 * 24 * 3600  # counters are cache keys too: they carry a TTL, renewed on each count


@dataclass(frozen=True)
class Event:
    stage: str
    tier: str          # hot | redis | results | lookup
    counter: str       # one of COUNTERS
    amount: int = 1


class CacheStats:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def record(self, events: list[Event], *, scope_token: str | None = None) -> None:
        """Add ``events`` to the global counters and (when given) the scope's."""
        if not events:
            return
        keys = [stats_key()] + ([stats_key(scope_token)] if scope_token else [])

        def write(r: redis.Redis) -> None:
            with r.pipeline(transaction=False) as pipe:
                for key in keys:
                    for e in events:
                        pipe.hincrby(key, f"{e.stage}:{e.tier}:{e.counter}", e.amount)
                    pipe.expire(key, STATS_TTL_S)
                pipe.execute()

        self.backend.call("stats", write, None)

    def raw(self, scope_token: str | None = None) -> dict[str, int] | None:
        data = self.backend.call("stats read", lambda r: r.hgetall(stats_key(scope_token)), None)
        if data is None:
            return None
        return {k.decode(): int(v) for k, v in data.items()}

    def snapshot(self, scope_token: str | None = None) -> dict[str, Any]:
        """Counters and hit ratios by tier and by stage; ``available`` is False when Redis is down."""
        raw = self.raw(scope_token)
        return summarise(raw or {}) | {"available": raw is not None}


def _ratio(hits: int, misses: int) -> float | None:
    return round(hits / (hits + misses), 4) if hits + misses else None


def summarise(raw: dict[str, int]) -> dict[str, Any]:
    stages: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: dict.fromkeys(COUNTERS, 0)))
    for field, value in raw.items():
        stage, tier, counter = field.split(":", 2)
        if counter in COUNTERS:
            stages[stage][tier][counter] += value
    tiers: dict[str, dict[str, Any]] = {t: dict.fromkeys(COUNTERS, 0) for t in TIERS}
    for per_tier in stages.values():
        for tier, counts in per_tier.items():
            if tier in tiers:
                for counter, value in counts.items():
                    tiers[tier][counter] += value
    for counts in tiers.values():
        counts["hit_ratio"] = _ratio(counts["hits"], counts["misses"])
    by_stage: dict[str, Any] = {}
    for stage, per_tier in sorted(stages.items()):
        entry: dict[str, Any] = {}
        for tier, counts in per_tier.items():
            entry[tier] = {**counts, "hit_ratio": _ratio(counts["hits"], counts["misses"])}
        lookup = per_tier.get("lookup")
        entry["hit_ratio"] = _ratio(lookup["hits"], lookup["misses"]) if lookup else None
        by_stage[stage] = entry
    return {"tiers": tiers, "stages": by_stage}


def prometheus_text(snapshot: dict[str, Any], *, prefix: str = "pixelmill_cache") -> str:
    """The snapshot in Prometheus' text exposition format, for a /metrics endpoint."""
    lines = [
        f"# HELP {prefix}_events_total Latent cache events by stage, tier and kind (hits, misses, bytes).",
        f"# TYPE {prefix}_events_total counter",
    ]
    for stage, per_tier in snapshot.get("stages", {}).items():
        for tier, counts in per_tier.items():
            if not isinstance(counts, dict):
                continue
            for counter in COUNTERS:
                lines.append(f'{prefix}_events_total{{stage="{stage}",tier="{tier}",kind="{counter}"}} {counts[counter]}')
    lines += [f"# HELP {prefix}_hit_ratio Hits / (hits + misses) per tier.", f"# TYPE {prefix}_hit_ratio gauge"]
    for tier, counts in snapshot.get("tiers", {}).items():
        if counts.get("hit_ratio") is not None:
            lines.append(f'{prefix}_hit_ratio{{tier="{tier}"}} {counts["hit_ratio"]}')
    lines += [f"# HELP {prefix}_up Whether the cache's Redis answered.", f"# TYPE {prefix}_up gauge",
              f"{prefix}_up {1 if snapshot.get('available', True) else 0}"]
    return "\n".join(lines) + "\n"
