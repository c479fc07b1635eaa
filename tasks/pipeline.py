"""The chain builder and the routing policy: the only places that know the stage order
and which queue runs what."""

from __future__ import annotations

from celery import chain

from tasks.celery_app import app, stage_task_name
from tasks.jobs import Job
from tasks.settings import STAGES, Settings

# (stage, engine) → queue; "*" matches any engine.
DEFAULT_ROUTES: dict[str, str] = {
    "encode:diffusion": "gpu",
    "generate:diffusion": "gpu",
    "encode:style": "cpu",
    "generate:style": "cpu",
    "enhance:*": "cpu",
    "audit:*": "cpu",
    "notify:*": "io",
}


def route_for(stage: str, engine: str, *, overrides: dict[str, str] | None = None) -> str:
    """The queue that runs ``stage`` for ``engine``. Overrides (setting ``routes``) win."""
    routes = {**DEFAULT_ROUTES, **(overrides or {})}
    for key in (f"{stage}:{engine}", f"{stage}:*"):
        if key in routes:
            return routes[key]
    raise KeyError(f"no route for stage {stage!r} and engine {engine!r}")


def build_chain(job: Job, settings: Settings, *, start: str = STAGES[0]) -> chain:
    """encode → generate → enhance → audit (or its tail from ``start``), as immutable
    signatures carrying only the job id. Tasks are named, not imported: the process that
    enqueues (web, reaper) never loads the engines the stages run."""
    engine = job.params["engine"]
    return chain(
        app.signature(stage_task_name(stage), args=(job.id,), immutable=True,
                      queue=route_for(stage, engine, overrides=settings.routes))
        for stage in STAGES[STAGES.index(start):]
    )


def enqueue(job: Job, settings: Settings) -> None:
    build_chain(job, settings).apply_async()


def enqueue_from(job: Job, stage: str, settings: Settings) -> None:
    """Enqueue the rest of a job's chain again, from ``stage`` on (the reaper's re-enqueue)."""
    build_chain(job, settings, start=stage).apply_async()
