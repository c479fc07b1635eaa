"""The shapes the JSON API answers with, as pydantic models, for its OpenAPI description.

The payloads themselves are built as plain dicts where they are made (``tasks.present``,
``Endpoint.public()``, ``Delivery.detail()`` …); these models describe them. Every model
forbids unknown fields, so a test that validates real payloads against them
(tests/integration/test_openapi.py) fails as soon as a payload gains, loses or renames a
field without its description. The published schema drops that ``additionalProperties:
false`` (see ``web.openapi``): clients should ignore fields added later.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.jobs import JobParams, JobStatus

StageState = Literal["pending", "running", "done", "stopped"]
BatchState = Literal["running", "done"]
DeliveryState = Literal["pending", "delivered", "dead"]
Timestamp = float  # seconds since the epoch (UTC)


class Out(BaseModel):
    """A response shape: exactly these fields."""

    model_config = ConfigDict(extra="forbid")


# --- errors -----------------------------------------------------------------------------------

class ErrorDetail(Out):
    code: str = Field(description="machine-readable, e.g. not_found, invalid_parameters, rate_limited",
                      examples=["not_found"])
    message: str = Field(description="what went wrong and what to do about it, for a person",
                         examples=["no job with id 'abc'"])


class ErrorResponse(Out):
    """Every error of the API: one shape, with the HTTP status that fits."""

    error: ErrorDetail


# --- jobs -------------------------------------------------------------------------------------

class JobLinks(Out):
    self: str = Field(description="this job in the API")
    page: str = Field(description="the job's page in the web UI")
    input: str = Field(description="the normalised input image (PNG)")
    result: str | None = Field(None, description="the result image (PNG); only once the job succeeded")
    cancel: str | None = Field(None, description="POST here to cancel; only while the job runs")
    batch: str | None = Field(None, description="the batch this job belongs to, if any")


class Progress(Out):
    """Steps of the running stage (diffusion reports one per denoising step)."""

    stage: str
    step: int
    steps: int
    at: int = Field(description="when it was reported, seconds since the epoch")


class Stage(Out):
    state: StageState
    cached: bool = Field(description="whether the latent cache served this stage")
    cache: dict[str, Any] | None = Field(description="how the cache served it (tier, match, …)")
    cache_label: str | None = Field(description="the same in words")
    seconds: float | None
    device_s: float | None = Field(description="worker-process time it used (its share, when batched): "
                                               "what it is priced by")
    attempts: int
    queue: str | None = Field(description="the Celery queue it ran on")
    worker: str | None = Field(description="the worker that ran it")


class Stages(Out):
    encode: Stage
    generate: Stage
    enhance: Stage
    audit: Stage


class AuditPolicyOut(Out):
    threshold: float
    action: str


class Audit(Out):
    """The output audit: NSFW classifier and quality checks under the tenant's policy."""

    verdict: Literal["pass", "flag", "block"]
    action: str | None
    scores: dict[str, float]
    model: str
    policy: AuditPolicyOut
    checks: dict[str, float | bool]
    reasons: list[str]


class JobError(Out):
    code: str
    message: str


class Cost(Out):
    """What the work cost so far: worker-process seconds per queue, priced per hour (PIXELMILL_PRICE_PER_HOUR)."""

    usd: float
    device_seconds: dict[str, float] = Field(description="by queue")


class BatchCost(Cost):
    images: int = Field(description="the batch's succeeded jobs")
    per_image_usd: float | None = Field(description="spend ÷ succeeded images; null before the first")


class Job(Out):
    """A job as the API (and the webhooks) show it: links to images, never bytes."""

    id: str
    batch_id: str | None
    status: JobStatus
    stage: str | None = Field(description="the stage running or next; null once the job ended")
    progress: Progress | None
    params: JobParams = Field(description="the parameters it runs with (the seed is always recorded)")
    input_name: str = Field(description="the uploaded file's name")
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None
    expires_at: Timestamp | None = Field(description="when it is canceled if still unfinished")
    stages: Stages
    audit: Audit | None
    error: JobError | None = Field(description="why it failed (or was canceled)")
    cost: Cost
    links: JobLinks


class JobList(Out):
    """Your jobs, the most recent first."""

    jobs: list[Job] = Field(description="the most recent first")


# --- webhooks seen from a job or a batch ------------------------------------------------------

class SubmissionWebhook(Out):
    """The webhook a submission asked for with ``webhook_url``."""

    endpoint_id: str
    url: str
    events: list[str]
    secret: str | None = Field(None, description="whsec_…; only when this submission created the endpoint: "
                                                 "store it, it is not shown again")
    note: str | None = None


class SubjectWebhook(Out):
    endpoint_id: str
    events: list[str]
    url: str | None


class DeliverySummary(Out):
    id: str
    event: str = Field(examples=["job.completed"])
    webhook_id: str = Field(description="the webhook-id header: the same on every attempt and redelivery")
    job_id: str | None
    batch_id: str | None
    endpoint_id: str
    url: str
    status: DeliveryState
    attempts: int
    last_status_code: int | None
    last_latency_ms: float | None
    last_error: str | None
    created_at: Timestamp
    next_attempt_at: Timestamp | None
    delivered_at: Timestamp | None
    dead_at: Timestamp | None


class JobCreated(Job):
    """The job, queued: follow `links.self` (or its events, or a webhook) until it ends."""

    webhook: SubmissionWebhook | None = Field(None, description="present when webhook_url was sent")


class JobDetail(Job):
    """The job, with its own webhook and every delivery of its events."""

    webhook: SubjectWebhook | None = Field(description="the job's own webhook, if it was submitted with one")
    deliveries: list[DeliverySummary] = Field(description="every webhook delivery of this job's events")


# --- batches ----------------------------------------------------------------------------------

class BatchLinks(Out):
    self: str
    page: str


class Batch(Out):
    id: str
    created_at: Timestamp
    status: BatchState
    total: int
    done: int = Field(description="jobs that ended, whatever the outcome")
    counts: dict[str, int] = Field(description="jobs per status")
    jobs: list[Job]
    cost: BatchCost
    links: BatchLinks


class BatchCreated(Batch):
    """The batch, queued: one job per image."""

    webhook: SubmissionWebhook | None = Field(None, description="present when webhook_url was sent")


class BatchDetail(Batch):
    """The batch and its jobs, with its webhook and deliveries."""

    webhook: SubjectWebhook | None
    deliveries: list[DeliverySummary]


# --- webhook endpoints and deliveries ---------------------------------------------------------

class Endpoint(Out):
    """A webhook endpoint; never its secret."""

    id: str
    url: str
    events: list[str]
    description: str
    standing: bool = Field(description="true: hears every event of the tenant its filter lets through; "
                                       "false: made for the jobs/batches that named its URL")
    disabled: bool
    disabled_reason: str | None
    created_at: Timestamp
    secret_created_at: Timestamp | None
    previous_secret_expires_at: Timestamp | None = Field(description="after a rotation: until when the old "
                                                                     "secret still signs")


class EndpointWithSecret(Endpoint):
    """The endpoint with its signing secret: the only time it is shown."""

    secret: str = Field(description="whsec_…: verify deliveries with it; shown only now")
    note: str


class EndpointDeleted(Endpoint):
    """The endpoint as it was; it is gone now."""

    deleted: Literal[True]


class EndpointList(Out):
    webhooks: list[Endpoint]


class Attempt(Out):
    at: Timestamp
    status_code: int | None
    latency_ms: float | None
    error: str | None
    retry_in_s: float | None


class DeliveryDetail(DeliverySummary):
    """A delivery and its attempts."""

    attempt_log: list[Attempt] = Field(description="the latest attempts, oldest first")


class DeliveryList(Out):
    deliveries: list[DeliveryDetail]


# --- API keys ---------------------------------------------------------------------------------

class ApiKey(Out):
    id: str
    tenant: str
    name: str
    created_at: Timestamp
    revoked_at: Timestamp | None


class ApiKeyCreated(ApiKey):
    """The new key: the only time it is shown."""

    key: str = Field(description="pm_…: send it as 'Authorization: Bearer pm_…'; shown only now")
    note: str


class ApiKeyList(Out):
    keys: list[ApiKey]


# --- the latent cache -------------------------------------------------------------------------

class CacheScope(Out):
    mode: str = Field(description="PIXELMILL_CACHE_SCOPE: tenant or shared")
    name: Literal["tenant", "shared"]


class CacheEntries(Out):
    latent: int | None = Field(description="null when the cache's Redis did not answer")
    result: int | None


class MemoryPolicy(Out):
    policy: str | None = Field(description="the cache Redis' maxmemory-policy; null when it cannot be read")
    maxmemory: int | None
    shared_with_broker: bool
    ok: bool
    problems: list[str]


class CacheLimits(Out):
    latent_ttl_s: int
    result_ttl_s: int
    max_entry_bytes: int
    hot_bytes_per_worker_process: int
    hash_radius: int
    singleflight_timeout_s: float


class CacheStats(BaseModel):
    """Hits, misses and bytes per tier and per stage (see docs/cache.md)."""

    model_config = ConfigDict(extra="forbid")

    tiers: dict[str, dict[str, float | int | None]]
    stages: dict[str, dict[str, Any]]
    available: bool


class Cache(Out):
    """The latent cache as your tenant sees it: entries, counters, memory policy, limits."""

    scope: CacheScope
    available: bool
    entries: CacheEntries
    stats: CacheStats
    memory_policy: MemoryPolicy
    limits: CacheLimits


class CacheCleared(Out):
    """Your scope's entries are gone: a new generation, so no worker serves an old one again."""

    cleared: Literal[True]
    deleted_keys: int


# --- routes described ahead of (or beside) their code: kept minimal ---------------------------

class Stats(BaseModel):
    """Service-wide figures, as the dashboard shows them: queue depths and workers, throughput and latency
    per stage over the last hour, cost per image, cache hit ratio. Described loosely on purpose: its
    figures grow with the dashboard."""

    model_config = ConfigDict(extra="allow")

    generated_at: Timestamp
    available: bool = Field(description="false when Redis did not answer: the figures are then empty")
    window_s: int = Field(description="the window of the 'last hour' figures")
    queues: dict[str, Any]
    stages: dict[str, Any]
    jobs: dict[str, Any]
    cost: dict[str, Any]
    cache: dict[str, Any] | None
    workers: list[Any]
