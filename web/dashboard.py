"""The operations dashboard (``/dashboard``) and its JSON twin (``GET /api/v1/stats``): queue
depths, workers and what they hold, throughput and latency per stage over the last hour, cost
per image, cache hit ratio. Server-rendered; charts are inline SVG (web.charts).

With auth on, a tenant sees its own work (jobs, stages, cost, cache, webhooks) beside the shared
infrastructure (queue depths, workers); an admin key sees every tenant's. With auth off there is
one tenant and it sees everything."""

from __future__ import annotations

import math
import time
from typing import Any

from flask import Blueprint, g, render_template
from markupsafe import Markup
from pydantic import ConfigDict, Field

from tasks.celery_app import app as celery_app
from tasks.present import Timestamp, View
from tasks.stats import fetch_stats
from web.charts import Series, bar_chart, format_seconds, line_chart
from web.extensions import current_tenant, pixelmill
from web.openapi import Json, operation

bp = Blueprint("dashboard", __name__)

STAGE_COLORS = {"encode": "#3b5bdb", "generate": "#ae3ec9", "enhance": "#2b8a3e", "audit": "#e67700"}
REFRESH_S = 30


def figures_tenant() -> str | None:
    """Whose figures this request sees: None for every tenant's (auth off, or an admin key of the
    operator's tenant, ``PIXELMILL_OPERATOR_TENANT``; web.auth sets ``g.api_key``), else its own
    tenant's. A tenant's admin key administers that tenant only: it never sees other tenants."""
    settings = pixelmill.services.settings
    key = g.get("api_key")
    if not settings.auth_enabled or (getattr(key, "admin", False) and settings.operator_tenant is not None
                                     and current_tenant() == settings.operator_tenant):
        return None
    return current_tenant()


@bp.get("/dashboard")
def show():
    stats = fetch_stats(pixelmill.services, celery=celery_app, tenant=figures_tenant())
    return render_template("dashboard.html", stats=stats, charts=stage_charts(stats), refresh_s=REFRESH_S,
                           usd=usd, human_bytes=human_bytes, seconds=seconds, ratio=ratio, score=score,
                           updated=time.strftime("%H:%M:%S", time.localtime(stats["generated_at"])))


class Stats(View):
    """The figures the dashboard shows: queue depths and workers, throughput and latency per stage over
    the last hour, cost per image, cache hit ratio. With auth on they are your tenant's own work (queue
    depths and workers are shared); an admin key sees the whole service's. Described loosely on
    purpose: its figures grow with the dashboard."""

    model_config = ConfigDict(extra="allow")

    generated_at: Timestamp
    tenant: str | None = Field(None, description="whose work the figures count; absent: every tenant's")
    available: bool = Field(description="false when Redis did not answer: the figures are then empty")
    window_s: int = Field(description="the window of the 'last hour' figures")
    queues: dict[str, Any]
    stages: dict[str, Any]
    sla: dict[str, Any] = Field(description="per priority: queue wait and total latency p50/p95/p99 of the last "
                                            "hour's succeeded jobs, the target and the breaches")
    jobs: dict[str, Any]
    quality: dict[str, Any] = Field(description="per score (clipscore, sharpness): median and mean of the last "
                                                "hour's ended jobs, and the all-time median")
    cost: dict[str, Any]
    cache: dict[str, Any] | None
    workers: list[Any]
    restarts: dict[str, Any] = Field(description="processes the stack supervisor restarted (Redis included): "
                                                 "count and last time")


@bp.get("/api/v1/stats")
@operation("showStats", "service", "Service figures: queues, jobs, cache", ok=(200, Json(Stats)))
def show_stats():
    return Stats(**fetch_stats(pixelmill.services, celery=celery_app, tenant=figures_tenant()))


def stage_charts(stats: dict[str, Any]) -> dict[str, dict[str, Markup]]:
    """Per stage: completions per minute (bars) and p50/p99 per 5 minutes (log scale)."""
    series = stats["series"]
    minutes, windows = len(series["minutes"]), len(series["latency_windows"])
    bar_labels = {i: _ago(minutes - i) for i in range(0, minutes, 15)} | {minutes - 1: "now"}
    line_labels = {0: _ago(minutes), windows // 2: _ago(minutes // 2), windows - 1: "now"}
    charts = {}
    for stage, counts in series["throughput"].items():
        color = STAGE_COLORS.get(stage, "#495057")
        latency = series["latency"][stage]
        charts[stage] = {
            "throughput": bar_chart(counts, title=f"{stage}: completed per minute, last hour", color=color,
                                    x_labels=bar_labels),
            "latency": line_chart([Series("p50", latency["p50_s"], color),
                                   Series("p99", latency["p99_s"], color, dashed=True)],
                                  title=f"{stage}: p50 and p99 latency per 5 minutes", x_labels=line_labels,
                                  log=True),
        }
    return charts


def _ago(minutes: int) -> str:
    return f"−{minutes}m"


# --- formatting for the template ---------------------------------------------------------------------

@bp.app_template_filter("usd")
def usd(value: float | None) -> str:
    """$0.0000312, $0.00420, $0.125, $1.25: enough digits to tell small costs apart."""
    if value is None:
        return "—"
    if value <= 0:
        return "$0"
    if value >= 1:
        return f"${value:,.2f}"
    return f"${value:.{max(2, 2 - math.floor(math.log10(value)))}f}"  # three significant digits


def human_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def seconds(value: float | None) -> str:
    return "—" if value is None else format_seconds(value)


def score(value: float | None) -> str:
    """A quality score (a median of a histogram: interpolated, so a few significant digits)."""
    return "—" if value is None else f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"
