"""The public shape of jobs and batches: what the API answers and webhooks carry (links, never bytes).

Each shape is a pydantic model, written once: ``job_view`` and ``batch_view`` build them, the
handlers answer with them and the OpenAPI document (web/openapi.py) publishes them. Every model
forbids unknown fields, so a payload cannot gain one that its description lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from tasks.cost import job_cost, per_image, total_cost
from tasks.jobs import Batch as BatchRecord
from tasks.jobs import Job as JobRecord
from tasks.jobs import JobParams, JobStatus
from tasks.settings import STAGES, get_settings

Timestamp = float  # seconds since the epoch (UTC)


class View(BaseModel):
    """An answer's shape: exactly these fields. One with a default (None) is left out while None.
    Its published schema is open (no ``additionalProperties``): clients ignore fields added later."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda schema: schema.pop("additionalProperties", None))

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name, field in type(self).model_fields.items():
            if not field.is_required() and data.get(name, 0) is None:
                del data[name]
        return data


class JobLinks(View):
    self: str = Field(description="this job in the API")
    page: str = Field(description="the job's page in the web UI")
    input: str = Field(description="the normalised input image (PNG)")
    result: str | None = Field(None, description="the result image (PNG); only once the job succeeded")
    cancel: str | None = Field(None, description="POST here to cancel; only while the job runs")
    batch: str | None = Field(None, description="the batch this job belongs to, if any")
    controls: dict[str, str] | None = Field(None, description="the control maps its ControlNets were guided by "
                                                              "(PNG), by type; once encode made them")


class Progress(View):
    """Steps of the running stage (diffusion reports one per denoising step)."""

    stage: str
    step: int
    steps: int
    at: int = Field(description="when it was reported, seconds since the epoch")


class Stage(View):
    state: Literal["pending", "running", "done", "stopped"]
    cached: bool = Field(description="whether the latent cache served this stage")
    cache: dict[str, Any] | None = Field(description="how the cache served it (tier, match, …)")
    cache_label: str | None = Field(description="the same in words")
    seconds: float | None
    device_s: float | None = Field(description="worker-process time it used (its share, when batched): "
                                               "what it is priced by")
    attempts: int
    queue: str | None = Field(description="the Celery queue it ran on")
    worker: str | None = Field(description="the worker that ran it")
    dtype: str | None = Field(None, description="the precision a diffusion stage ran at (fp32, fp16, bf16): "
                                                "its queue's (PIXELMILL_QUEUE_DTYPES)")


class Stages(View):
    encode: Stage
    generate: Stage
    enhance: Stage
    audit: Stage


class AuditPolicyOut(View):
    threshold: float
    action: str


class Quality(View):
    """The quality policy's judgement (safety.quality_policy): the score it judged against its threshold."""

    metric: Literal["clipscore", "sharpness"]
    threshold: float
    action: Literal["flag", "fail", "regenerate"]
    max_retries: int
    score: float | None = Field(description="the judged score (of the attempt kept); null: the job has none")
    outcome: Literal["pass", "flag", "fail", "regenerate", "unscored"]
    reason: str | None
    attempt: int = Field(description="the attempt judged last (1: the first generation)")
    kept: int | None = Field(description="the attempt served, when the policy regenerated")


class Audit(View):
    """The output audit: NSFW classifier, quality checks and scores under the tenant's policies."""

    verdict: Literal["pass", "flag", "block"]
    action: str | None
    scores: dict[str, float] = Field(description="nsfw (0-1); sharpness (variance of the Laplacian); phash_distance "
                                                 "(0-64, to the input); clipscore (0-100, to the prompt: diffusion "
                                                 "jobs with a prompt, when a CLIP model is configured)")
    model: str
    nsfw_reused: bool | None = Field(None, description="true when the NSFW score is this very image's from an "
                                                        "earlier audit (the same bytes), so the model did not run "
                                                        "again; absent otherwise")
    policy: AuditPolicyOut
    checks: dict[str, float | bool]
    reasons: list[str]
    quality: Quality | None = Field(None, description="the tenant's quality policy's judgement; absent without one")


class Attempt(View):
    """One generation of a job that its quality policy regenerated."""

    attempt: int
    seed: int | None
    scores: dict[str, float]
    outcome: str = Field(description="what the quality policy made of it: regenerate, pass, flag, …")
    kept: bool = Field(False, description="the attempt served")
    result: str = Field(description="its result image (a blob reference)")
    device_seconds: dict[str, float] | None = Field(None, description="what its stages used, by queue (the "
                                                                      "kept attempt's are the job's stages)")


class Faces(View):
    """What face restoration did in enhance (the job asked for face_restore)."""

    found: int = Field(description="faces the detector found in the result")
    restored: int = Field(description="faces restored and pasted back (the largest 20; none under 16 px, and none "
                                      "with weight 0)")
    weight: float = Field(description="face_restore: the restored face's weight over the original")
    restorer: str = Field(description="the restorer (a face/ model of the library)")
    detector: str = Field(description="the detector (a face/ model of the library)")


class JobError(View):
    code: str
    message: str


class Cost(View):
    """What the work cost so far: worker-process seconds per queue, priced per hour (PIXELMILL_PRICE_PER_HOUR)."""

    usd: float
    device_seconds: dict[str, float] = Field(description="by queue")


class BatchCost(Cost):
    images: int = Field(description="the batch's succeeded jobs")
    per_image_usd: float | None = Field(description="spend ÷ succeeded images; null before the first")


class Source(View):
    """Where the job's input image came from: an upload, a data URI or a URL (never the data itself)."""

    kind: Literal["upload", "data_uri", "url"]
    url: str | None = Field(None, description="kind url: the URL it is fetched from, as it was given")
    media_type: str | None = Field(None, description="kind data_uri: the media type the URI declared")


class Job(View):
    """A job as the API (and the webhooks) show it: links to images, never bytes."""

    id: str
    batch_id: str | None
    status: JobStatus
    stage: str | None = Field(description="the stage running or next; null once the job ended")
    progress: Progress | None
    params: JobParams = Field(description="the parameters it runs with (the seed is always recorded)")
    input_name: str = Field(description="the uploaded file's name (for a URL, the last part of its path)")
    source: Source | None = Field(None, description="where the input came from; a job of kind url stays "
                                                    "queued while its image is fetched (on the io queue)")
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None
    expires_at: Timestamp | None = Field(description="when it is canceled if still unfinished")
    stages: Stages
    audit: Audit | None
    faces: Faces | None = Field(None, description="face restoration, once enhance ran it (face_restore)")
    attempts: list[Attempt] | None = Field(None, description="every generation, when the quality policy "
                                                             "regenerated the job (seed, scores, which was kept)")
    error: JobError | None = Field(description="why it failed (or was canceled)")
    cost: Cost
    links: JobLinks


class BatchLinks(View):
    self: str
    page: str


class Batch(View):
    id: str
    created_at: Timestamp
    status: Literal["running", "done"]
    total: int
    done: int = Field(description="jobs that ended, whatever the outcome")
    counts: dict[str, int] = Field(description="jobs per status")
    jobs: list[Job]
    cost: BatchCost
    links: BatchLinks


J = TypeVar("J", bound=Job)
B = TypeVar("B", bound=Batch)


def job_view(job: JobRecord, *, progress: dict[str, Any] | None = None, base_url: str = "",
             prices: Mapping[str, float] | None = None, model: type[J] = Job, **extra: Any) -> J:
    """The job as ``model`` shows it (``Job``, or a kind of it with ``extra`` fields)."""
    api = f"{base_url}/api/v1/jobs/{job.id}"
    links = JobLinks(self=api, page=f"{base_url}/jobs/{job.id}", input=f"{api}/input",
                     result=f"{api}/result" if job.status is JobStatus.SUCCEEDED else None,
                     cancel=None if job.status.is_terminal() else f"{api}/cancel",
                     batch=f"{base_url}/api/v1/batches/{job.batch_id}" if job.batch_id else None,
                     controls={name.removeprefix("control_"): f"{api}/control/{name.removeprefix('control_')}"
                               for name in sorted(job.outputs) if name.startswith("control_")} or None)
    return model(
        id=job.id, batch_id=job.batch_id, status=job.status, stage=current_stage(job), progress=progress or None,
        params=job.params, input_name=job.input_name, source=job.source, created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at, expires_at=job.expires_at,
        stages={name: _stage_view(job, name) for name in STAGES}, audit=job.audit, faces=job.faces, error=job.error,
        attempts=[_attempt_view(a) for a in job.attempts] or None,
        cost=Cost(**job_cost(job, _prices(prices)).to_dict()),  # tasks.cost: device-seconds priced per queue
        links=links, **extra)


def job_payload(job: JobRecord, **options: Any) -> dict[str, Any]:
    """``job_view`` as JSON-ready data: for the pages, the event streams and webhook payloads."""
    return job_view(job, **options).model_dump(mode="json")


def _attempt_view(attempt: dict[str, Any]) -> Attempt:
    return Attempt(**{name: attempt[name] for name in Attempt.model_fields if name in attempt})


def current_stage(job: JobRecord) -> str | None:
    if job.status.is_terminal():
        return None
    for name in STAGES:
        if not job.stages[name].done:
            return name
    return None


def _stage_view(job: JobRecord, name: str) -> Stage:
    record = job.stages[name]
    if record.done:
        state = "done"
    elif record.started_at and not job.status.is_terminal():
        state = "running"
    elif record.started_at:
        state = "stopped"
    else:
        state = "pending"
    return Stage(state=state, cached=record.cached, cache=record.cache,
                 cache_label=cache_label(record.cached, record.cache), seconds=record.seconds,
                 device_s=record.device_s, attempts=record.attempts, queue=record.queue, worker=record.worker,
                 dtype=record.dtype)


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
        label = "latent re-encoded (not in the cache)" if tier == "recomputed" else f"latent from the {tier} tier"
        prompt = cache.get("prompt")
        if prompt in ("hot", "redis"):
            label += f"; prompt embedding from the {prompt} tier (prompt cache hit)"
        elif prompt:
            label += "; prompt encoded (prompt cache miss)"
        return label
    return None


def batch_view(batch: BatchRecord, jobs: list[JobRecord], *, base_url: str = "", model: type[B] = Batch,
               **extra: Any) -> B:
    """The batch and its jobs as ``model`` shows them (``Batch``, or a kind of it with ``extra`` fields)."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status.value] = counts.get(job.status.value, 0) + 1
    done = sum(1 for job in jobs if job.status.is_terminal())
    return model(
        id=batch.id, created_at=batch.created_at, status="done" if done == len(jobs) else "running",
        total=len(jobs), done=done, counts=counts, jobs=[job_view(job, base_url=base_url) for job in jobs],
        cost=_batch_cost(jobs),
        links=BatchLinks(self=f"{base_url}/api/v1/batches/{batch.id}", page=f"{base_url}/batches/{batch.id}"),
        **extra)


def batch_payload(batch: BatchRecord, jobs: list[JobRecord], *, base_url: str = "") -> dict[str, Any]:
    """``batch_view`` as JSON-ready data: for the pages, the event streams and webhook payloads."""
    return batch_view(batch, jobs, base_url=base_url).model_dump(mode="json")


def _prices(prices: Mapping[str, float] | None) -> Mapping[str, float]:
    return get_settings().price_per_hour if prices is None else prices


def _batch_cost(jobs: list[JobRecord]) -> BatchCost:
    """The batch's spend so far, and per delivered image (spend ÷ succeeded jobs)."""
    total = total_cost(job_cost(job, _prices(None)) for job in jobs)
    images = sum(1 for job in jobs if job.status is JobStatus.SUCCEEDED)
    return BatchCost(**total.to_dict(), images=images, per_image_usd=per_image(total.usd, images))
