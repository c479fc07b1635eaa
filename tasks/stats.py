"""The service's numbers in one JSON-ready shape: what the dashboard draws, ``/api/v1/stats``
returns and ``/metrics`` exports (queue depths, workers, throughput and latency per stage,
cost per image, cache hit ratios, webhook outcomes). Read-only; every web process computes the
same answer from Redis and the broker.

``tenant`` narrows them to one tenant's work: its jobs, stages, images, cost (its device-seconds
priced now), cache counters and webhook outcomes. Queue depths, workers and restarts are the
infrastructure everyone shares and stay whole; so do queue prices."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import redis
from celery import Celery

from cache.scopes import scope_for
from tasks.cost import per_image, stage_cost_usd
from tasks.heartbeat import WorkerInfo, fetch_restarts, fetch_workers
from tasks.metrics import (SCORE_BUCKETS, WINDOW_MINUTES, Aggregate, Histogram, fetch_active, fetch_minutes,
                           fetch_totals, window)
from tasks.queues import fetch_queue_depths
from tasks.services import Services
from tasks.priority import LEVELS, all_queues, base_of, consume_order
from tasks.settings import QUEUES, STAGES
from tasks.store import store_key

log = logging.getLogger(__name__)

LATENCY_WINDOW_MINUTES = 5  # the latency chart's resolution: p50/p99 per 5 minutes


def fetch_stats(rt: Services, *, celery: Celery, now: float | None = None, tenant: str | None = None) -> dict[str, Any]:
    """The figures of the whole service (``tenant`` None), or of one tenant's work."""
    now = time.time() if now is None else now
    prices = dict(rt.settings.price_per_hour)
    try:
        minutes = fetch_minutes(rt.redis, minutes=WINDOW_MINUTES, now=now, tenant=tenant)
        totals = fetch_totals(rt.redis, tenant=tenant)
        mine = None if tenant is None else [i.decode() for i in rt.redis.smembers(store_key("active", tenant))]
        active = fetch_active(rt.redis, max_age_s=rt.settings.job_ttl_s, now=now, job_ids=mine)
        workers = fetch_workers(rt.redis)
        restarts = fetch_restarts(rt.redis)
        available = True
    except redis.RedisError as e:
        log.warning("stats: Redis unavailable: %s", e)
        minutes, totals, active, workers, restarts, available = [], Aggregate(), {}, [], {}, False
    if tenant is not None:  # a tenant's hashes hold device-seconds; price them as its jobs are priced
        for agg in (totals, *(agg for _, agg in minutes)):
            _price(agg, prices)
    hour = window(minutes)
    queues = list(dict.fromkeys([*all_queues(QUEUES), *prices, *consume_order(q for w in workers for q in w.queues)]))
    depths = fetch_queue_depths(celery, queues)
    hour_usd, total_usd = sum(hour.usd.values()), sum(totals.usd.values())
    images_hour, images_total = hour.jobs.get("succeeded", 0), totals.jobs.get("succeeded", 0)
    return {
        "generated_at": round(now, 3),
        "tenant": tenant,
        "available": available,
        "window_s": WINDOW_MINUTES * 60,
        "prices_per_hour": prices,
        "cost": {
            "per_image_usd": per_image(hour_usd, images_hour),
            "last_hour_usd": round(hour_usd, 10),
            "images_last_hour": images_hour,
            "per_image_usd_all_time": per_image(total_usd, images_total),
            "total_usd": round(total_usd, 10),
            "images_total": images_total,
        },
        "queues": {q: _queue(q, hour=hour, depth=depths.get(q), workers=workers, price=prices.get(base_of(q)))
                   for q in queues},
        "stages": {stage: _stage(stage, hour=hour, totals=totals) for stage in STAGES},
        "sla": {level: _sla(level, hour=hour, totals=totals, target_s=rt.settings.sla_target_s.get(level))
                for level in LEVELS},
        "quality": {metric: _score(metric, hour=hour, totals=totals) for metric in SCORE_BUCKETS},
        "jobs": {"active": active, "finished_last_hour": hour.jobs, "finished_total": totals.jobs,
                 "created_total": totals.created},
        "cache": _cache(rt, tenant=tenant),
        "webhooks": {"last_hour": hour.webhooks, "total": totals.webhooks},
        "workers": [_worker(w, now=now) for w in workers],
        "restarts": restarts,
        "series": _series(minutes),
    }


def _queue(name: str, *, hour: Aggregate, depth: int | None, workers: list[WorkerInfo],
           price: float | None) -> dict[str, Any]:
    serving = [w for w in workers if name in consume_order(w.queues)]  # a worker of `cpu` takes its levels too
    return {
        "depth": depth,
        "workers": len(serving),
        "workers_ready": sum(1 for w in serving if w.state == "ready"),
        "images_per_hour": hour.images.get(name, 0),
        "device_seconds_last_hour": round(sum(s for (_, q), s in hour.device_s.items() if q == name), 4),
        "usd_last_hour": round(hour.usd.get(name, 0.0), 10),
        "price_per_hour": price,
    }


def _stage(stage: str, *, hour: Aggregate, totals: Aggregate) -> dict[str, Any]:
    recent, ever = hour.stage_histogram(stage), totals.stage_histogram(stage)
    return {
        "completed_last_hour": recent.count,
        **_percentiles(recent),
        "device_seconds_last_hour": round(sum(s for (name, _), s in hour.device_s.items() if name == stage), 4),
        "by_queue": {q: {"completed_last_hour": h.count, **_percentiles(h)}
                     for (name, q), h in sorted(hour.latency.items()) if name == stage and h.count},
        "all_time": {"completed": ever.count, **_percentiles(ever)},
    }


def _score(metric: str, *, hour: Aggregate, totals: Aggregate) -> dict[str, Any]:
    """A quality score of ended jobs (clipscore, sharpness): median and mean over the last hour and
    since the counters started (medians interpolated inside the histogram's buckets)."""
    recent, ever = hour.score_histogram(metric), totals.score_histogram(metric)
    return {"jobs_last_hour": recent.count, "median_last_hour": _round(recent.quantile(0.5)),
            "mean_last_hour": _round(recent.sum / recent.count if recent.count else None),
            "jobs_total": ever.count, "median_all_time": _round(ever.quantile(0.5))}


def _sla(level: str, *, hour: Aggregate, totals: Aggregate, target_s: float | None) -> dict[str, Any]:
    """One priority's service level over the last hour: p50/p95/p99 of the time its succeeded jobs
    waited in queues and of their whole latency, against the target, and the breaches."""
    def quantiles(measure: str) -> dict[str, float | None]:
        hist = hour.sla.get((measure, level), Histogram())
        return {f"p{q}_s": _round(hist.quantile(q / 100)) for q in (50, 95, 99)}

    return {"target_s": target_s, "jobs_last_hour": hour.sla.get(("total", level), Histogram()).count,
            "wait": quantiles("wait"), "total": quantiles("total"),
            "breaches_last_hour": hour.breaches.get(level, 0), "breaches_total": totals.breaches.get(level, 0)}


def _percentiles(hist: Histogram) -> dict[str, float | None]:
    return {"p50_s": _round(hist.quantile(0.5)), "p99_s": _round(hist.quantile(0.99)),
            "mean_s": _round(hist.sum / hist.count if hist.count else None)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _price(agg: Aggregate, prices: dict[str, float]) -> None:
    agg.usd = {}
    for (_, queue), seconds in agg.device_s.items():
        agg.usd[queue] = agg.usd.get(queue, 0.0) + stage_cost_usd(seconds, queue, prices)


def _cache(rt: Services, *, tenant: str | None = None) -> dict[str, Any]:
    """Every scope's counters, or a tenant's own (none when the cache is shared: its counters
    cannot be told apart from everyone else's)."""
    if tenant is None:
        snapshot = rt.cache.stats.snapshot()
    elif rt.settings.cache_scope == "tenant":
        snapshot = rt.cache.stats.snapshot(scope_for(tenant=tenant, mode="tenant").token)
    else:
        snapshot = {"available": True, "stages": {}, "tiers": {}}
    hits = misses = 0
    stages: dict[str, float | None] = {}
    for stage, entry in snapshot.get("stages", {}).items():
        lookup = entry.get("lookup") or {}
        hits, misses = hits + lookup.get("hits", 0), misses + lookup.get("misses", 0)
        stages[stage] = entry.get("hit_ratio")
    return {
        "available": snapshot.get("available", False),
        "hits": hits,
        "misses": misses,
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "stages": stages,
        "tiers": snapshot.get("tiers", {}),
    }


def _worker(info: WorkerInfo, *, now: float) -> dict[str, Any]:
    return asdict(info) | {"up_s": round(max(now - info.started_at, 0.0), 1),
                           "seen_s_ago": round(max(now - info.seen_at, 0.0), 1)}


def _series(minutes: list[tuple[int, Aggregate]]) -> dict[str, Any]:
    """Per minute: completions per stage; per 5 minutes: p50 and p99 per stage."""
    groups = [minutes[i:i + LATENCY_WINDOW_MINUTES] for i in range(0, len(minutes), LATENCY_WINDOW_MINUTES)]
    latency: dict[str, dict[str, list[float | None]]] = {}
    for stage in STAGES:
        hists = [window(group).stage_histogram(stage) for group in groups]
        latency[stage] = {"p50_s": [_round(h.quantile(0.5)) for h in hists],
                          "p99_s": [_round(h.quantile(0.99)) for h in hists]}
    return {
        "minutes": [minute * 60 for minute, _ in minutes],
        "throughput": {stage: [agg.completed(stage) for _, agg in minutes] for stage in STAGES},
        "latency_windows": [group[0][0] * 60 for group in groups],
        "latency": latency,
    }
