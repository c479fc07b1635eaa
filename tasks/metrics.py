"""Service metrics, aggregated in Redis so that every web process reads the same numbers.

Written (queued on the job store's transitions as counter groups, ``add_counts``; never raising
into a stage):

- at the end of each stage (``stage_metrics``, in the store's transition that marks it done):
  its latency in a cumulative histogram per stage and queue, its device-seconds and their cost;
- at each change of a job's state (``count_transition``, inside the store's transaction, so
  terminal states are counted exactly once): counters of terminal states, images per queue,
  and the map of active jobs to their current state;
- after each webhook attempt (``record_webhook``): outcomes.

The same fields go to a ``totals`` hash (since the start, for Prometheus counters) and to a hash
per minute (TTL ~2 h, for "the last hour" on the dashboard). Field names:
``lat:<stage>:<queue>:<bucket>``, ``lat_us:<stage>:<queue>`` (the sum, in whole microseconds),
``dev_us:<stage>:<queue>``, ``usd:<queue>``, ``jobs:<state>``, ``img:<queue>``,
``webhook:<outcome>``, ``created``, and per priority for succeeded jobs
``sla:<wait|total>:<priority>:<bucket>``, ``sla_us:…`` and ``breach:<priority>`` (service levels:
tasks.priority). Ended jobs' quality scores (of the attempt served):
``score:<clipscore|sharpness>:<bucket>`` and ``score_sum:…`` (buckets: ``SCORE_BUCKETS``).

Sums of seconds are integers of microseconds, added by HINCRBY: Redis takes three times as long
over an HINCRBYFLOAT, and a job's end adds a few dozen of them. The float fields written before
(``lat_sum:``, ``dev:``, ``sla_sum:``, in seconds) are still read.

Each tenant has the same two kinds of hash (``tenant:<tenant>:totals`` and ``…:minute:<m>``), for
the figures a tenant sees of its own work: written once per job, when it ends (its stages' latency
and device-seconds, its state, its images), at its creation and per webhook attempt. Cost is not
stored there: it is device-seconds priced at read time (as a job's own cost is).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import redis

from tasks.cost import UNKNOWN_QUEUE, stage_cost_usd
from tasks.jobs import Job, JobStatus
from tasks.transition import Writes

log = logging.getLogger(__name__)

PREFIX = "pixelmill:metrics"
# Upper bounds (seconds) of the latency buckets, 10 ms … 30 min; a last bucket takes the rest (+Inf).
BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                              120.0, 300.0, 600.0, 1200.0, 1800.0)
# Quality scores of ended jobs (their audit's, of the attempt kept): upper bounds per score.
SCORE_BUCKETS: dict[str, tuple[float, ...]] = {
    "clipscore": (5.0, 10.0, 15.0, 20.0, 22.5, 25.0, 27.5, 30.0, 32.5, 35.0, 40.0, 50.0, 100.0),
    "sharpness": (10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0),
}
MINUTE_TTL_S = 2 * 3600 + 120
WINDOW_MINUTES = 60


def metrics_key(kind: str, *parts: str) -> str:
    """Every Redis key of the metrics: ``pixelmill:metrics:<kind>:<parts…>``."""
    return ":".join((PREFIX, kind, *parts))


def minute_of(t: float) -> int:
    return int(t // 60)


def _minute_key(minute: int, tenant: str | None = None) -> str:
    return metrics_key("minute", str(minute)) if tenant is None else metrics_key("tenant", tenant, "minute", str(minute))


def _totals_key(tenant: str | None = None) -> str:
    return metrics_key("totals") if tenant is None else metrics_key("tenant", tenant, "totals")


# --- histogram math -----------------------------------------------------------------------------

def bucket_index(seconds: float, bounds: tuple[float, ...] = BUCKETS) -> int:
    """The bucket a latency (or a score, with its bounds) falls in: the first whose bound is ≥ it
    (len(bounds) for +Inf)."""
    return bisect.bisect_left(bounds, seconds)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # per bucket, not cumulative
    sum: float = 0.0
    bounds: tuple[float, ...] = BUCKETS  # the buckets' upper bounds (a score's: SCORE_BUCKETS)

    @classmethod
    def of(cls, bounds: tuple[float, ...]) -> "Histogram":
        return cls(counts=[0] * (len(bounds) + 1), bounds=bounds)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, seconds: float) -> None:
        self.counts[bucket_index(seconds, self.bounds)] += 1
        self.sum += seconds

    def merge(self, other: "Histogram") -> "Histogram":
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum
        return self

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations ≤ it) for every bucket, the last bound being +inf."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated linearly inside its bucket (as Prometheus'
        histogram_quantile does); None without observations. Values in the +Inf bucket
        answer the largest finite bound."""
        total = self.count
        if not total:
            return None
        rank = min(max(q, 0.0), 1.0) * total
        below = 0
        for i, n in enumerate(self.counts):
            if n and below + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                lower = self.bounds[i - 1] if i else 0.0
                return lower + (self.bounds[i] - lower) * max(rank - below, 0.0) / n
            below += n
        return self.bounds[-1]


# --- aggregates -------------------------------------------------------------------------------------

@dataclass
class Aggregate:
    """The fields of a ``totals`` or per-minute hash, parsed (and summed, for a window)."""

    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # (stage, queue)
    device_s: dict[tuple[str, str], float] = field(default_factory=dict)     # (stage, queue)
    usd: dict[str, float] = field(default_factory=dict)                      # queue
    jobs: dict[str, int] = field(default_factory=dict)                       # terminal state
    images: dict[str, int] = field(default_factory=dict)                     # queue
    webhooks: dict[str, int] = field(default_factory=dict)                   # outcome
    sla: dict[tuple[str, str], Histogram] = field(default_factory=dict)      # (wait | total, priority)
    breaches: dict[str, int] = field(default_factory=dict)                   # priority
    scores: dict[str, Histogram] = field(default_factory=dict)               # clipscore | sharpness
    created: int = 0

    @classmethod
    def parse(cls, raw: Mapping[bytes | str, bytes | str]) -> "Aggregate":
        agg = cls()
        for name, value in raw.items():
            name = name.decode() if isinstance(name, bytes) else name
            value = value.decode() if isinstance(value, bytes) else value
            try:
                agg._add(name, value)
            except (ValueError, IndexError):
                log.debug("metrics: ignoring field %r", name)
        return agg

    def _add(self, name: str, value: str) -> None:
        kind, _, rest = name.partition(":")
        if kind == "lat":
            stage, _, rest = rest.partition(":")
            queue, _, index = rest.rpartition(":")
            self.latency.setdefault((stage, queue), Histogram()).counts[int(index)] += int(value)
        elif kind in ("lat_us", "lat_sum"):
            stage, _, queue = rest.partition(":")
            self.latency.setdefault((stage, queue), Histogram()).sum += _seconds(kind, value)
        elif kind in ("dev_us", "dev"):
            stage, _, queue = rest.partition(":")
            self.device_s[(stage, queue)] = self.device_s.get((stage, queue), 0.0) + _seconds(kind, value)
        elif kind == "usd":
            self.usd[rest] = self.usd.get(rest, 0.0) + float(value)
        elif kind in ("jobs", "img", "webhook"):
            table = {"jobs": self.jobs, "img": self.images, "webhook": self.webhooks}[kind]
            table[rest] = table.get(rest, 0) + int(value)
        elif kind == "created":
            self.created += int(value)
        elif kind == "sla":
            measure, _, rest = rest.partition(":")
            priority, _, index = rest.rpartition(":")
            self.sla.setdefault((measure, priority), Histogram()).counts[int(index)] += int(value)
        elif kind in ("sla_us", "sla_sum"):
            measure, _, priority = rest.partition(":")
            self.sla.setdefault((measure, priority), Histogram()).sum += _seconds(kind, value)
        elif kind == "breach":
            self.breaches[rest] = self.breaches.get(rest, 0) + int(value)
        elif kind == "score" and (metric := rest.rpartition(":")[0]) in SCORE_BUCKETS:
            self.score_histogram(metric).counts[int(rest.rpartition(":")[2])] += int(value)
        elif kind == "score_sum" and rest in SCORE_BUCKETS:
            self.score_histogram(rest).sum += float(value)

    def merge(self, other: "Aggregate") -> "Aggregate":
        for mine_h, theirs_h in ((self.latency, other.latency), (self.sla, other.sla)):
            for key, hist in theirs_h.items():
                mine_h.setdefault(key, Histogram()).merge(hist)
        for metric, hist in other.scores.items():
            self.score_histogram(metric).merge(hist)
        for mine, theirs in ((self.device_s, other.device_s), (self.usd, other.usd), (self.jobs, other.jobs),
                             (self.images, other.images), (self.webhooks, other.webhooks),
                             (self.breaches, other.breaches)):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        self.created += other.created
        return self

    def score_histogram(self, metric: str) -> Histogram:
        """Ended jobs' ``metric`` (clipscore, sharpness), in its buckets."""
        if metric not in self.scores:
            self.scores[metric] = Histogram.of(SCORE_BUCKETS[metric])
        return self.scores[metric]

    def stage_histogram(self, stage: str) -> Histogram:
        """One stage's latency over every queue it ran on."""
        merged = Histogram()
        for (name, _), hist in self.latency.items():
            if name == stage:
                merged.merge(hist)
        return merged

    def completed(self, stage: str) -> int:
        return sum(h.count for (name, _), h in self.latency.items() if name == stage)


def _seconds(kind: str, value: str) -> float:
    """A sum of seconds as stored: whole microseconds (``…_us``), or seconds (the fields before)."""
    return int(value) / 1e6 if kind.endswith("_us") else float(value)


# --- writes -----------------------------------------------------------------------------------------

def _micros(seconds: float) -> int:
    return round(seconds * 1e6)


def add_counts(pipe: redis.client.Pipeline | Writes, keys: tuple[str, ...], amounts: dict[str, int | float]) -> None:
    """Add each amount to its field of every hash in ``keys``: on a transition, as one compact
    group (``Writes.add_counts``); on a pipeline, as HINCRBY (int) / HINCRBYFLOAT (float) commands."""
    if isinstance(pipe, Writes):
        pipe.add_counts(keys, amounts)
        return
    for key in keys:
        for name, amount in amounts.items():
            if type(amount) is int:
                pipe.hincrby(key, name, amount)
            else:
                pipe.hincrbyfloat(key, name, amount)


def stage_metrics(pipe: redis.client.Pipeline | Writes, *, stage: str, queue: str | None, seconds: float,
                  device_s: float, prices: Mapping[str, float], now: float | None = None) -> None:
    """A stage finished after ``seconds`` of wall time, using ``device_s`` of its worker process:
    queued on a pipeline or a transition (no I/O here); never raises."""
    try:
        q = queue or UNKNOWN_QUEUE
        amounts: dict[str, int | float] = {f"lat:{stage}:{q}:{bucket_index(seconds)}": 1,
                                           f"lat_us:{stage}:{q}": _micros(seconds),
                                           f"dev_us:{stage}:{q}": _micros(device_s)}
        if usd := stage_cost_usd(device_s, queue, prices):
            amounts[f"usd:{q}"] = float(usd)
        minute = _minute_key(minute_of(time.time() if now is None else now))
        add_counts(pipe, (metrics_key("totals"), minute), amounts)
        pipe.expire(minute, MINUTE_TTL_S)
    except Exception as e:  # noqa: BLE001 — a metric is never worth a failed stage
        log.warning("metrics: could not record %s on %s: %s", stage, queue, e)


def count_created(pipe: redis.client.Pipeline, jobs: Iterable[Job]) -> None:
    """New jobs are active and queued. Queued on the store's pipeline (no I/O here)."""
    try:
        jobs = list(jobs)
        per_tenant: dict[str, int] = {}
        for job in jobs:
            pipe.hset(metrics_key("active"), job.id, _active_value(job))
            per_tenant[job.tenant] = per_tenant.get(job.tenant, 0) + 1
        pipe.hincrby(metrics_key("totals"), "created", len(jobs))
        for tenant, n in per_tenant.items():
            pipe.hincrby(_totals_key(tenant), "created", n)
    except Exception as e:  # noqa: BLE001
        log.warning("metrics: could not count new jobs: %s", e)


def count_transition(pipe: Writes, before: JobStatus, job: Job, *, now: float | None = None,
                     sla_target_s: Mapping[str, float] | None = None) -> None:
    """A job moved from ``before`` to ``job.status``: added to the store's transition, so a
    terminal state is counted exactly once (terminal states never change again)."""
    if before is job.status:
        return
    try:
        if not job.status.is_terminal():
            pipe.hset(metrics_key("active"), job.id, _active_value(job))
            return
        pipe.hdel(metrics_key("active"), job.id)
        at = minute_of(time.time() if now is None else now)
        minute, tenant_minute = _minute_key(at), _minute_key(at, job.tenant)
        every = (metrics_key("totals"), minute, _totals_key(job.tenant), tenant_minute)
        amounts: dict[str, int | float] = {f"jobs:{job.status.value}": 1}
        if job.status is JobStatus.SUCCEEDED:
            amounts.update((f"img:{queue}", 1) for queue in sorted({r.queue for r in job.stages.values()
                                                                     if r.done and r.queue}))
            amounts.update(_job_sla(job, target_s=(sla_target_s or {}).get(job.params.get("priority", "normal"))))
        amounts.update(_job_scores(job))
        add_counts(pipe, every, amounts)
        add_counts(pipe, every[2:], _job_stages(job))  # the service's own are written per stage
        pipe.expire(minute, MINUTE_TTL_S)
        pipe.expire(tenant_minute, MINUTE_TTL_S)
    except Exception as e:  # noqa: BLE001
        log.warning("metrics: could not count job %s moving to %s: %s", job.id, job.status.value, e)


def _job_stages(job: Job) -> dict[str, int | float]:
    """The latency and device-seconds of a job's finished stages, as stage_metrics writes them."""
    amounts: dict[str, int | float] = {}
    for stage, record in job.stages.items():
        if not record.done:
            continue
        q = record.queue or UNKNOWN_QUEUE
        seconds = record.seconds or 0.0
        amounts[f"lat:{stage}:{q}:{bucket_index(seconds)}"] = 1
        amounts[f"lat_us:{stage}:{q}"] = _micros(seconds)
        if record.device_s:
            amounts[f"dev_us:{stage}:{q}"] = _micros(record.device_s)
    return amounts


def _job_scores(job: Job) -> dict[str, int | float]:
    """An ended job's quality scores (of the attempt served), in their histograms."""
    scores = (job.audit or {}).get("scores") or {}
    amounts: dict[str, int | float] = {}
    for metric, bounds in SCORE_BUCKETS.items():
        value = scores.get(metric)
        if isinstance(value, int | float):
            amounts[f"score:{metric}:{bucket_index(value, bounds)}"] = 1
            amounts[f"score_sum:{metric}"] = round(float(value), 6)
    return amounts


def _job_sla(job: Job, *, target_s: float | None) -> dict[str, int | float]:
    """A succeeded job's service level, per priority: its total latency (submit → end), the part
    of it spent waiting in queues (total − its stages' own time), and a breach past the target."""
    priority = job.params.get("priority", "normal")
    total = max((job.finished_at or job.updated_at) - job.created_at, 0.0)
    wait = max(total - sum(r.seconds or 0.0 for r in job.stages.values() if r.done), 0.0)
    amounts: dict[str, int | float] = {}
    for measure, seconds in (("total", total), ("wait", wait)):
        amounts[f"sla:{measure}:{priority}:{bucket_index(seconds)}"] = 1
        amounts[f"sla_us:{measure}:{priority}"] = _micros(seconds)
    if target_s is not None and total > target_s:
        amounts[f"breach:{priority}"] = 1
    return amounts


def record_webhook(client: redis.Redis, outcome: str, *, tenant: str | None = None, now: float | None = None) -> None:
    """A webhook attempt ended: delivered, retry (it will be tried again) or dead (dead-lettered)."""
    try:
        at = minute_of(time.time() if now is None else now)
        tenants = [None] if tenant is None else [None, tenant]
        with client.pipeline(transaction=False) as pipe:
            for who in tenants:
                minute = _minute_key(at, who)
                pipe.hincrby(_totals_key(who), f"webhook:{outcome}", 1)
                pipe.hincrby(minute, f"webhook:{outcome}", 1)
                pipe.expire(minute, MINUTE_TTL_S)
            pipe.execute()
    except Exception as e:  # noqa: BLE001
        log.warning("metrics: could not record a webhook %s: %s", outcome, e)


def _active_value(job: Job) -> str:
    return f"{job.status.value}|{int(job.updated_at)}"


# --- reads ------------------------------------------------------------------------------------------

def fetch_totals(client: redis.Redis, *, tenant: str | None = None) -> Aggregate:
    """Since the counters started: the whole service's, or one tenant's."""
    return Aggregate.parse(client.hgetall(_totals_key(tenant)))


def fetch_minutes(client: redis.Redis, *, minutes: int = WINDOW_MINUTES, now: float | None = None,
                  tenant: str | None = None) -> list[tuple[int, Aggregate]]:
    """One aggregate per minute for the last ``minutes`` minutes (this one included), oldest first:
    the whole service's, or one tenant's."""
    last = minute_of(time.time() if now is None else now)
    span = list(range(last - minutes + 1, last + 1))
    with client.pipeline(transaction=False) as pipe:
        for minute in span:
            pipe.hgetall(_minute_key(minute, tenant))
        raws = pipe.execute()
    return [(minute, Aggregate.parse(raw)) for minute, raw in zip(span, raws, strict=True)]


def fetch_active(client: redis.Redis, *, max_age_s: float, now: float | None = None,
                 job_ids: Iterable[str] | None = None) -> dict[str, int]:
    """Unfinished jobs by current state: every job's, or only ``job_ids``' (a tenant's). An entry
    older than ``max_age_s`` (the job's record has expired without ever finishing) is not counted."""
    cutoff = (time.time() if now is None else now) - max_age_s
    counts: dict[str, int] = {s.value: 0 for s in JobStatus if not s.is_terminal()}
    if job_ids is None:
        values = client.hvals(metrics_key("active"))
    else:
        ids = list(job_ids)
        values = [v for v in client.hmget(metrics_key("active"), ids) if v is not None] if ids else []
    for value in values:
        state, _, updated = value.decode().partition("|")
        if state in counts and (not updated.isdigit() or int(updated) >= cutoff):
            counts[state] += 1
    return counts


def window(minutes: list[tuple[int, Aggregate]]) -> Aggregate:
    """The sum of per-minute aggregates."""
    total = Aggregate()
    for _, agg in minutes:
        total.merge(agg)
    return total
