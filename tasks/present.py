"""The public shape of jobs and batches: what the API returns and webhooks carry (links, never bytes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.cost import job_cost, per_image, total_cost
from tasks.jobs import Batch, Job, JobStatus
from tasks.settings import STAGES, get_settings


def job_payload(job: Job, *, progress: dict[str, Any] | None = None, base_url: str = "",
                prices: Mapping[str, float] | None = None) -> dict[str, Any]:
    api = f"{base_url}/api/v1/jobs/{job.id}"
    links = {"self": api, "page": f"{base_url}/jobs/{job.id}", "input": f"{api}/input"}
    if job.status is JobStatus.SUCCEEDED:
        links["result"] = f"{api}/result"
    if not job.status.is_terminal():
        links["cancel"] = f"{api}/cancel"
    if job.batch_id:
        links["batch"] = f"{base_url}/api/v1/batches/{job.batch_id}"
    return {
        "id": job.id,
        "batch_id": job.batch_id,
        "status": job.status.value,
        "stage": current_stage(job),
        "progress": progress or None,
        "params": job.params,
        "input_name": job.input_name,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
        "expires_at": job.expires_at,
        "stages": {name: _stage_payload(job, name) for name in STAGES},
        "audit": job.audit,
        "error": job.error,
        "cost": job_cost(job, _prices(prices)).to_dict(),  # tasks.cost: device-seconds priced per queue
        "links": links,
    }


def current_stage(job: Job) -> str | None:
    if job.status.is_terminal():
        return None
    for name in STAGES:
        if not job.stages[name].done:
            return name
    return None


def _stage_payload(job: Job, name: str) -> dict[str, Any]:
    record = job.stages[name]
    if record.done:
        state = "done"
    elif record.started_at and not job.status.is_terminal():
        state = "running"
    elif record.started_at:
        state = "stopped"
    else:
        state = "pending"
    return {
        "state": state,
        "cached": record.cached,
        "cache": record.cache,
        "cache_label": cache_label(record.cached, record.cache),
        "seconds": record.seconds,
        "device_s": record.device_s,
        "attempts": record.attempts,
        "queue": record.queue,
        "worker": record.worker,
    }


def cache_label(cached: bool, cache: dict[str, Any] | None) -> str | None:
    """What the latent cache did for a stage, in words for the job page."""
    cache = cache or {}
    if cached:
        if cache.get("tier") == "results":
            return "served from cache: identical request, stored result (generate did not run)"
        parts = [f"{cache['tier']} tier" if cache.get("tier") else None,
                 "near-duplicate of an earlier upload" if cache.get("match") == "near" else None,
                 "waited for another worker's encode" if cache.get("waited_s") else None]
        return "served from cache" + (": " + ", ".join(p for p in parts if p) if any(parts) else "")
    if cache.get("note"):
        return cache["note"]
    if cache.get("latent_tier"):
        tier = cache["latent_tier"]
        return "latent re-encoded (not in the cache)" if tier == "recomputed" else f"latent from the {tier} tier"
    return None


def batch_payload(batch: Batch, jobs: list[Job], *, base_url: str = "") -> dict[str, Any]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status.value] = counts.get(job.status.value, 0) + 1
    done = sum(1 for job in jobs if job.status.is_terminal())
    return {
        "id": batch.id,
        "created_at": batch.created_at,
        "status": "done" if done == len(jobs) else "running",
        "total": len(jobs),
        "done": done,
        "counts": counts,
        "jobs": [job_payload(job, base_url=base_url) for job in jobs],
        "cost": _batch_cost(jobs),
        "links": {"self": f"{base_url}/api/v1/batches/{batch.id}", "page": f"{base_url}/batches/{batch.id}"},
    }


def _prices(prices: Mapping[str, float] | None) -> Mapping[str, float]:
    return get_settings().price_per_hour if prices is None else prices


def _batch_cost(jobs: list[Job]) -> dict[str, Any]:
    """The batch's spend so far, and per delivered image (spend ÷ succeeded jobs)."""
    total = total_cost(job_cost(job, _prices(None)) for job in jobs)
    images = sum(1 for job in jobs if job.status is JobStatus.SUCCEEDED)
    return total.to_dict() | {"images": images, "per_image_usd": per_image(total.usd, images)}
