"""The chain builder and the routing policy: the only places that know the stage order
and which queue runs what."""

from __future__ import annotations

from celery import chain

from tasks.celery_app import app, stage_task_name
from tasks.jobs import Job
from tasks.priority import JOB_CREATED_HEADER, queue_for
from tasks.quality import quality_queue
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
    "fetch:*": "io",  # an input image given by URL (tasks.inputs): the network, as webhooks
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
    engine, level = job.params["engine"], job.params.get("priority", "normal")
    headers = {JOB_CREATED_HEADER: job.created_at}  # the starvation guard promotes by age (tasks.priority)
    return chain(
        app.signature(stage_task_name(stage), args=(job.id,), immutable=True, headers=headers,
                      queue=queue_for(quality_queue(job.params, stage, settings.quality_levels)
                                      or route_for(stage, engine, overrides=settings.routes), level))
        for stage in STAGES[STAGES.index(start):]
    )


FETCH_TASK = "pixelmill.fetch_input"


def enqueue(job: Job, settings: Settings) -> None:
    """The job's chain; for a job whose input is still a URL, its fetch (which enqueues the chain
    once the image is stored: tasks.inputs)."""
    if not job.input_ref:
        enqueue_fetch(job, settings)
        return
    build_chain(job, settings).apply_async()


def enqueue_from(job: Job, stage: str, settings: Settings) -> None:
    """Enqueue the rest of a job's chain again, from ``stage`` on (the reaper's re-enqueue); a job
    still waiting for its input gets its fetch again instead."""
    if not job.input_ref:
        enqueue_fetch(job, settings)
        return
    build_chain(job, settings, start=stage).apply_async()


def enqueue_fetch(job: Job, settings: Settings) -> None:
    app.signature(FETCH_TASK, args=(job.id,), immutable=True,
                  queue=route_for("fetch", job.params["engine"], overrides=settings.routes)).apply_async()
