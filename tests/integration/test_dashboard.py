"""Metrics end to end: style jobs through real workers, then the dashboard, /api/v1/stats and a
Prometheus scrape of /metrics (checked by promtool), and queue depths read from real brokers."""

from __future__ import annotations

import http.server
import io
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from celery import Celery
from kombu import Connection, Queue
from prometheus_client.parser import text_string_to_metric_families

from tasks.queues import fetch_queue_depths
from tasks.settings import STAGES
from tests.conftest import encode, photo, wait_for_job

pytestmark = pytest.mark.integration


class _Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def finished(workers) -> Iterator[dict]:
    """Two style jobs (one with a webhook) run to the end; the web app and the metrics they left."""
    from web import create_app

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    app = create_app()
    app.config["TESTING"] = True
    client = app.test_client()
    before = _scrape(client)
    ids = []
    for name, extra in (("astronaut", {"webhook_url": f"http://127.0.0.1:{receiver.server_port}/hook",
                                       "webhook_events": "job.completed"}), ("coffee", {})):
        response = client.post("/api/v1/jobs", data={"image": (io.BytesIO(encode(photo(name, size=96))), f"{name}.png"),
                                                     "style": "sketch", **extra},
                               content_type="multipart/form-data")
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    jobs = [wait_for_job(lambda i: client.get(f"/api/v1/jobs/{i}").get_json(), i, timeout_s=90) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
    deadline = time.monotonic() + 20  # the webhook is delivered by the io worker, after the job ends
    while _value(_scrape(client), "pixelmill_webhook_deliveries_total", outcome="delivered") <= \
            _value(before, "pixelmill_webhook_deliveries_total", outcome="delivered"):
        assert time.monotonic() < deadline, "the job.completed delivery was never counted"
        time.sleep(0.2)
    yield {"client": client, "jobs": jobs, "before": before}
    receiver.shutdown()


def _scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    return response.get_data(as_text=True)


def _samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(s.value for s in _samples(text) if s.name == name and labels.items() <= s.labels.items())


def test_each_job_reports_what_it_cost(finished):
    for job in finished["jobs"]:
        cost = job["cost"]
        assert cost["usd"] > 0 and cost["device_seconds"]["cpu"] > 0, cost
        used = sum(stage["device_s"] for stage in job["stages"].values())
        assert sum(cost["device_seconds"].values()) == pytest.approx(used, abs=1e-3)
        assert cost["usd"] == pytest.approx(cost["device_seconds"]["cpu"] * 0.10 / 3600, rel=1e-3)
    page = finished["client"].get(f"/jobs/{finished['jobs'][0]['id']}").get_data(as_text=True)
    assert re.search(r'id="cost".*?Cost: <strong>\$0\.\d+</strong> · cpu \d+\.\d\d s', page, re.S)


def test_stats_have_cost_per_image_stage_percentiles_queues_and_workers(finished):
    stats = finished["client"].get("/api/v1/stats").get_json()
    assert stats["available"] is True
    assert stats["cost"]["images_last_hour"] >= 2 and stats["cost"]["per_image_usd"] > 0
    assert stats["cost"]["last_hour_usd"] >= 2 * min(j["cost"]["usd"] for j in finished["jobs"]) * 0.99
    for stage in STAGES:
        s = stats["stages"][stage]
        assert s["completed_last_hour"] >= 2, (stage, s)
        assert 0 < s["p50_s"] <= s["p99_s"] <= 1800, (stage, s)
        assert sum(s["by_queue"][q]["completed_last_hour"] for q in s["by_queue"]) == s["completed_last_hour"]
        assert sum(stats["series"]["throughput"][stage]) == s["completed_last_hour"]
    cpu = stats["queues"]["cpu"]
    assert cpu["images_per_hour"] >= 2 and cpu["usd_last_hour"] > 0 and cpu["price_per_hour"] == 0.10
    assert all(isinstance(q["depth"], int) for q in stats["queues"].values()), stats["queues"]
    assert cpu["workers"] >= 2 and cpu["workers_ready"] >= 1  # the prefork cpu worker: two processes
    assert stats["queues"]["io"]["workers"] >= 1 and stats["queues"]["gpu"]["workers"] >= 1
    cpu_procs = [w for w in stats["workers"] if w["hostname"].startswith("test-")]
    assert len(cpu_procs) >= 2 and all(w["queues"] == ["cpu"] and w["pool"] == "prefork" and
                                       w["memory"]["rss_bytes"] > 10 * 2**20 for w in cpu_procs), cpu_procs
    gpu = [w for w in stats["workers"] if w["hostname"].startswith("gpu-")]
    assert gpu and gpu[0]["model"] and gpu[0]["model"].endswith("models/tiny") and gpu[0]["dtype"], gpu
    assert gpu[0]["device"] and gpu[0]["batching"]["max_batch"] == 4 and gpu[0]["state"] == "ready", gpu
    assert stats["jobs"]["finished_last_hour"]["succeeded"] >= 2
    assert len(stats["series"]["minutes"]) == 60 and len(stats["series"]["latency_windows"]) == 12


def test_the_dashboard_page_renders_the_numbers_offline(finished):
    html = finished["client"].get("/dashboard").get_data(as_text=True)
    stats = finished["client"].get("/api/v1/stats").get_json()
    assert re.search(r'id="cost-per-image">\$0\.\d+<', html), "no cost per image on the page"
    assert re.search(r'id="images-last-hour">(\d+)<', html).group(1) == str(stats["cost"]["images_last_hour"])
    assert html.count('<svg class="chart"') == 2 * len(STAGES)
    assert html.count("<rect ") >= len(STAGES)  # each stage has at least one minute with completions
    for stage in STAGES:
        assert f'data-stage="{stage}"' in html
    assert re.search(r'data-queue="cpu">.*?<td class="num">\d+</td>', html, re.S)  # a depth, not "—"
    assert 'class="pill state-ready">ready<' in html and "test-" in html
    assert re.search(r"<code>[^<]*models/tiny</code>", html) and "up to 4, " in html  # the gpu worker's model, batching
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from another host: works offline
    assert "<script" not in html and 'style="' not in html
    assert 'href="/dashboard"' in finished["client"].get("/").get_data(as_text=True)  # in the nav


def test_metrics_have_the_series(finished):
    text, before = _scrape(finished["client"]), finished["before"]
    assert _value(text, "pixelmill_jobs_finished_total", state="succeeded") >= \
        _value(before, "pixelmill_jobs_finished_total", state="succeeded") + 2
    assert _value(text, "pixelmill_jobs_created_total") >= _value(before, "pixelmill_jobs_created_total") + 2
    for stage in STAGES:
        count = _value(text, "pixelmill_stage_duration_seconds_count", stage=stage, queue="cpu")
        assert count >= 2 and _value(text, "pixelmill_stage_duration_seconds_bucket", stage=stage, queue="cpu",
                                     le="+Inf") == count
        assert _value(text, "pixelmill_stage_duration_seconds_sum", stage=stage, queue="cpu") > 0
    assert _value(text, "pixelmill_cost_usd_total", queue="cpu") > \
        _value(before, "pixelmill_cost_usd_total", queue="cpu")
    assert _value(text, "pixelmill_stage_device_seconds_total", queue="cpu") > 0
    assert _value(text, "pixelmill_images_total", queue="cpu") >= 2
    assert _value(text, "pixelmill_worker_up", queue="cpu") >= 2
    assert _value(text, "pixelmill_worker_up", queue="io") >= 1
    assert _value(text, "pixelmill_worker_up", queue="gpu") >= 1
    assert _value(text, "pixelmill_worker_memory_bytes", kind="rss") > 0
    assert {"cpu", "gpu", "io"} <= {s.labels["queue"] for s in _samples(text) if s.name == "pixelmill_queue_depth"}
    assert _value(text, "pixelmill_broker_up") == 1 and _value(text, "pixelmill_metrics_store_up") == 1
    assert _value(text, "pixelmill_cache_up") == 1 and "# TYPE pixelmill_cache_hits_total counter" in text
    assert _value(text, "pixelmill_jobs_active", state="queued") >= 0
    assert "# TYPE pixelmill_webhook_deliveries_total counter" in text


def test_metrics_pass_promtool(finished):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing under CI: install Debian's 'prometheus' package "
                        "(scripts/install-system-deps.sh)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    text = _scrape(finished["client"])
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


# --- queue depths on both kinds of broker ------------------------------------------------------------

def _publish(url: str, queue: str, n: int) -> None:
    with Connection(url) as conn:
        producer = conn.Producer()
        for i in range(n):
            producer.publish({"n": i}, routing_key=queue, declare=[Queue(queue)], serializer="json")


def test_queue_depths_from_a_redis_broker(redis_server):
    url = redis_server.url.rsplit("/", 1)[0] + "/12"  # a broker database of its own
    Connection(url).default_channel.client.flushdb()
    _publish(url, "pm-depth-a", 3)
    depths = fetch_queue_depths(Celery(broker=url), ["pm-depth-a", "pm-depth-empty"])
    assert depths == {"pm-depth-a": 3, "pm-depth-empty": 0}
    assert fetch_queue_depths(Celery(broker="redis://127.0.0.1:1/0"), ["cpu"]) == {"cpu": None}


def _rabbitmq_up() -> bool:
    try:
        with Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _rabbitmq_up(), reason="no RabbitMQ on 127.0.0.1:5672")
def test_queue_depths_from_a_rabbitmq_broker():
    url, queue = "amqp://guest:guest@127.0.0.1:5672//", f"pm-depth-{os.getpid()}"
    try:
        _publish(url, queue, 4)
        depths = fetch_queue_depths(Celery(broker=url), ["pm-depth-missing", queue, "pm-depth-missing-2"])
        assert depths == {"pm-depth-missing": 0, queue: 4, "pm-depth-missing-2": 0}
    finally:
        with Connection(url) as conn:
            Queue(queue)(conn.default_channel).delete()


def test_a_metrics_token_guards_the_scrape(redis_server):
    from tasks.settings import Settings
    from web import create_app

    client = create_app(Settings(metrics_token="s3cret")).test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and "Bearer" in refused.headers["WWW-Authenticate"]
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scraped = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert scraped.status_code == 200 and b"pixelmill_jobs_finished_total" in scraped.data
