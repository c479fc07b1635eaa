"""Prometheus metrics, read from Redis at scrape time.

Web processes are many and workers are elsewhere, so nothing is counted in this process: a
custom collector turns the Redis-held aggregates (tasks.metrics), the heartbeats
(tasks.heartbeat), the broker's queue depths and the cache counters into metric families on
every scrape. docs/operations.md lists the series.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from celery import Celery
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from cache.stats import summarise
from tasks.heartbeat import WorkerInfo, fetch_workers
from tasks.jobs import TERMINAL, JobStatus
from tasks.metrics import Aggregate, fetch_active, fetch_totals
from tasks.queues import fetch_queue_depths
from tasks.services import Services
from tasks.priority import LEVELS, all_queues, consume_order
from tasks.settings import QUEUES

log = logging.getLogger(__name__)

WEBHOOK_OUTCOMES = ("delivered", "retry", "dead")
TERMINAL_STATES = sorted(s.value for s in TERMINAL)


class PixelmillCollector(Collector):
    def __init__(self, rt: Services, *, celery: Celery) -> None:
        self.rt = rt
        self.celery = celery

    def collect(self) -> Iterator[Metric]:
        try:
            totals = fetch_totals(self.rt.redis)
            active = fetch_active(self.rt.redis, max_age_s=self.rt.settings.job_ttl_s)
            workers = fetch_workers(self.rt.redis)
            up = 1
        except redis.RedisError as e:
            log.warning("/metrics: Redis unavailable: %s", e)
            totals, active, workers, up = Aggregate(), {}, [], 0
        yield _gauge("pixelmill_metrics_store_up", "Whether the job store's Redis (which holds the metrics) answered.",
                     value=up)
        yield from self._jobs(totals, active)
        yield from self._stages(totals)
        yield from self._service_levels(totals)
        yield from self._quality(totals)
        yield from self._cost(totals)
        yield from self._queues(workers)
        yield from self._workers(workers)
        yield from self._cache()
        webhooks = CounterMetricFamily("pixelmill_webhook_deliveries", "Webhook delivery attempts by outcome: "
                                       "delivered, retry (failed, will be retried), dead (dead-lettered).",
                                       labels=["outcome"])
        for outcome in sorted({*WEBHOOK_OUTCOMES, *totals.webhooks}):
            webhooks.add_metric([outcome], totals.webhooks.get(outcome, 0))
        yield webhooks

    def _jobs(self, totals: Aggregate, active: dict[str, int]) -> Iterator[Metric]:
        yield CounterMetricFamily("pixelmill_jobs_created", "Jobs submitted.", value=totals.created)
        finished = CounterMetricFamily("pixelmill_jobs_finished", "Jobs that reached a terminal state, by state.",
                                       labels=["state"])
        for state in TERMINAL_STATES:
            finished.add_metric([state], totals.jobs.get(state, 0))
        yield finished
        current = GaugeMetricFamily("pixelmill_jobs_active", "Unfinished jobs by current state.", labels=["state"])
        for state in (s.value for s in JobStatus if not s.is_terminal()):
            current.add_metric([state], active.get(state, 0))
        yield current

    def _stages(self, totals: Aggregate) -> Iterator[Metric]:
        duration = HistogramMetricFamily("pixelmill_stage_duration_seconds", "Wall time of each finished stage.",
                                         labels=["stage", "queue"])
        for (stage, queue), hist in sorted(totals.latency.items()):
            buckets = [(floatToGoString(bound), float(n)) for bound, n in hist.cumulative()]
            duration.add_metric([stage, queue], buckets, sum_value=hist.sum)
        yield duration
        device = CounterMetricFamily("pixelmill_stage_device_seconds", "Worker-process seconds used by finished "
                                     "stages (a batched stage counts its share).", labels=["stage", "queue"])
        for (stage, queue), seconds in sorted(totals.device_s.items()):
            device.add_metric([stage, queue], seconds)
        yield device

    def _service_levels(self, totals: Aggregate) -> Iterator[Metric]:
        latency = HistogramMetricFamily("pixelmill_job_latency_seconds", "Succeeded jobs by priority: their time "
                                        "waiting in queues (measure=wait) and from submit to end (measure=total); "
                                        "histogram_quantile gives p50/p95/p99.", labels=["priority", "measure"])
        for (measure, level), hist in sorted(totals.sla.items()):
            buckets = [(floatToGoString(bound), float(n)) for bound, n in hist.cumulative()]
            latency.add_metric([level, measure], buckets, sum_value=hist.sum)
        yield latency
        breaches = CounterMetricFamily("pixelmill_sla_breaches", "Succeeded jobs slower than their priority's "
                                       "target (setting sla_target_s).", labels=["priority"])
        target = GaugeMetricFamily("pixelmill_sla_target_seconds", "The latency target per priority.",
                                   labels=["priority"])
        for level in LEVELS:
            breaches.add_metric([level], totals.breaches.get(level, 0))
            if level in self.rt.settings.sla_target_s:
                target.add_metric([level], self.rt.settings.sla_target_s[level])
        yield breaches
        yield target

    def _quality(self, totals: Aggregate) -> Iterator[Metric]:
        described = {"clipscore": ("pixelmill_clipscore", "CLIPScore (0-100, the result against its prompt) of "
                                   "ended diffusion jobs, when a CLIP model is configured (PIXELMILL_CLIP_MODEL)."),
                     "sharpness": ("pixelmill_sharpness", "Sharpness (variance of the Laplacian) of every ended "
                                   "job's result.")}
        for metric, (name, documentation) in described.items():
            family = HistogramMetricFamily(name, documentation)
            hist = totals.score_histogram(metric)
            family.add_metric([], [(floatToGoString(bound), float(n)) for bound, n in hist.cumulative()],
                              sum_value=hist.sum)
            yield family

    def _cost(self, totals: Aggregate) -> Iterator[Metric]:
        prices = self.rt.settings.price_per_hour
        cost = CounterMetricFamily("pixelmill_cost_usd", "Spend in USD: device seconds priced per queue "
                                   "(setting price_per_hour) when each stage finished.", labels=["queue"])
        for queue in sorted({*prices, *totals.usd}):
            cost.add_metric([queue], totals.usd.get(queue, 0.0))
        yield cost
        images = CounterMetricFamily("pixelmill_images", "Succeeded jobs, by each queue that ran one of their "
                                     "stages.", labels=["queue"])
        for queue in sorted({*QUEUES, *totals.images}):
            images.add_metric([queue], totals.images.get(queue, 0))
        yield images
        price = GaugeMetricFamily("pixelmill_price_per_process_hour_usd", "The configured price of one worker "
                                  "process for an hour, per queue.", labels=["queue"])
        for queue, value in sorted(prices.items()):
            price.add_metric([queue], value)
        yield price

    def _queues(self, workers: list[WorkerInfo]) -> Iterator[Metric]:
        names = list(dict.fromkeys([*all_queues(QUEUES), *consume_order(q for w in workers for q in w.queues)]))
        depths = fetch_queue_depths(self.celery, names)
        depth = GaugeMetricFamily("pixelmill_queue_depth", "Messages waiting in the broker, per queue.",
                                  labels=["queue"])
        for name, value in depths.items():
            if value is not None:
                depth.add_metric([name], value)
        yield depth
        yield _gauge("pixelmill_broker_up", "Whether the broker answered the queue-depth query.",
                     value=int(any(v is not None for v in depths.values())))

    def _workers(self, workers: list[WorkerInfo]) -> Iterator[Metric]:
        up = GaugeMetricFamily("pixelmill_worker_up", "1 for each worker process seen in the last heartbeat "
                               "interval, per queue it consumes.", labels=["worker", "pid", "queue"])
        ready = GaugeMetricFamily("pixelmill_worker_ready", "1 when the process has loaded and warmed its models, "
                                  "0 while warming.", labels=["worker", "pid"])
        info = GaugeMetricFamily("pixelmill_worker_info", "What a worker process holds (always 1).",
                                 labels=["worker", "pid", "pool", "model", "device", "dtype"])
        memory = GaugeMetricFamily("pixelmill_worker_memory_bytes", "Memory of a worker process: rss, and on "
                                   "CUDA cuda_allocated and cuda_reserved.", labels=["worker", "pid", "kind"])
        for w in workers:
            pid = str(w.pid)
            for queue in w.queues:
                up.add_metric([w.hostname, pid, queue], 1)
            ready.add_metric([w.hostname, pid], 1 if w.state == "ready" else 0)
            info.add_metric([w.hostname, pid, w.pool, w.model or "", w.device or "", w.dtype or ""], 1)
            for kind, value in sorted(w.memory.items()):
                memory.add_metric([w.hostname, pid, kind.removesuffix("_bytes")], value)
        yield from (up, ready, info, memory)

    def _cache(self) -> Iterator[Metric]:
        raw = self.rt.cache.stats.raw()
        stages = summarise(raw or {})["stages"]
        families = {
            "hits": CounterMetricFamily("pixelmill_cache_hits", "Latent cache hits by stage and tier "
                                        "(tier lookup: each lookup once).", labels=["stage", "tier"]),
            "misses": CounterMetricFamily("pixelmill_cache_misses", "Latent cache misses by stage and tier.",
                                          labels=["stage", "tier"]),
        }
        moved = CounterMetricFamily("pixelmill_cache_bytes", "Bytes the latent cache served and stored.",
                                    labels=["stage", "tier", "direction"])
        for stage, per_tier in sorted(stages.items()):
            for tier, counts in sorted(per_tier.items()):
                if not isinstance(counts, dict):
                    continue
                for counter, family in families.items():
                    family.add_metric([stage, tier], counts[counter])
                if tier != "lookup":
                    moved.add_metric([stage, tier, "served"], counts["bytes_served"])
                    moved.add_metric([stage, tier, "stored"], counts["bytes_stored"])
        yield from (*families.values(), moved)
        yield _gauge("pixelmill_cache_up", "Whether the latent cache's Redis answered.", value=int(raw is not None))


def _gauge(name: str, documentation: str, *, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def registry_for(rt: Services, *, celery: Celery) -> CollectorRegistry:
    """A registry holding only the pixelmill collector (no process metrics of this web process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PixelmillCollector(rt, celery=celery))
    return registry
