"""Webhooks end to end on real workers (cpu/gpu prefork + a threads io worker) and a real
HTTP receiver on 127.0.0.1 (the allow-private setting is on for the test session):
signatures checked with the `standardwebhooks` package, filters, retries, dead letters and
redelivery, 410, a slow receiver that blocks nothing, batch.completed once, events in order.
With the setting off, every forbidden address form is refused at submit time."""

from __future__ import annotations

import http.server
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from standardwebhooks import Webhook

from tests.conftest import encode, photo, wait_for_job
from stack.redis_server import free_port

pytestmark = pytest.mark.integration

Answer = tuple[int, dict[str, str], float]  # status, headers, seconds to wait before answering


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: str
    at: float

    @property
    def payload(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server on loopback that records every request and answers as told."""

    answer: Callable[[int, Received], Answer] = lambda n, req: (200, {}, 0.0)
    port: int = 0
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                req = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                receiver.requests.append(req)
                status, headers, delay = receiver.answer(len(receiver.requests), req)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in {**headers, "Content-Length": "0"}.items():
                        self.send_header(name, value)
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of(self, *, job_id: str | None = None, type_: str | None = None, path: str | None = None) -> list[Received]:
        found = []
        for req in list(self.requests):
            payload = req.payload
            if job_id and payload["data"].get("id") != job_id:
                continue
            if type_ and payload["type"] != type_:
                continue
            if path and req.path != path:
                continue
            found.append(req)
        return found


LAST_SEEN: list = []


def eventually(check: Callable[[], object], *, timeout_s: float = 20, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last seen: {LAST_SEEN}")
        time.sleep(0.05)


def verify(secret: str, req: Received) -> dict:
    """The receiver's side, exactly as the standardwebhooks package does it."""
    return Webhook(secret).verify(req.body, req.headers)


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(answer=None, *, port: int = 0) -> Receiver:
        receiver = Receiver(answer or (lambda n, req: (200, {}, 0.0)), port=port)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def endpoints(client) -> Iterator[list[str]]:
    """Endpoint ids to delete after the test, so later jobs of the tenant do not call them."""
    ids: list[str] = []
    yield ids
    for endpoint in client.get("/api/v1/webhooks").get_json()["webhooks"]:
        if endpoint["id"] in ids or endpoint["url"].startswith("http://127.0.0.1:"):
            client.delete(f"/api/v1/webhooks/{endpoint['id']}")


def submit(client, *, name: str = "astronaut", **fields) -> dict:
    data = {"image": (io.BytesIO(encode(photo(name, size=64))), f"{name}.png"), "style": "sketch", "size": "64",
            **fields}
    response = client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def job_api(client, job_id: str) -> dict:
    return client.get(f"/api/v1/jobs/{job_id}").get_json()


def deliveries_settled(client, job_id: str, count: int) -> list[dict] | None:
    deliveries = job_api(client, job_id)["deliveries"]
    LAST_SEEN[:] = deliveries
    if len(deliveries) >= count and all(d["status"] != "pending" for d in deliveries):
        return deliveries
    return None


# --- the "done when" list ------------------------------------------------------------------------

def test_signed_filtered_deliveries_verify_with_standardwebhooks(client, workers, receivers, endpoints):
    receiver = receivers()
    created = client.post("/api/v1/webhooks", json={"url": receiver.url("/standing"), "events": ["job.completed"],
                                                    "description": "all completions"})
    assert created.status_code == 201, created.get_json()
    standing = created.get_json()
    endpoints.append(standing["id"])
    old_secret = standing["secret"]
    assert old_secret.startswith("whsec_")
    assert "secret" not in client.get(f"/api/v1/webhooks/{standing['id']}").get_json()  # shown once
    rotated = client.post(f"/api/v1/webhooks/{standing['id']}/rotate", json={}).get_json()
    new_secret = rotated["secret"]
    assert new_secret != old_secret and rotated["previous_secret_expires_at"] > time.time()

    job = submit(client, webhook_url=receiver.url("/job"), webhook_events="job.started")
    job_secret = job["webhook"]["secret"]
    assert job["webhook"]["events"] == ["job.started"]
    endpoints.append(job["webhook"]["endpoint_id"])
    again = submit(client, name="coffee", webhook_url=receiver.url("/job"), webhook_events='["job.started"]')
    assert again["webhook"]["endpoint_id"] == job["webhook"]["endpoint_id"] and "secret" not in again["webhook"]

    for submitted in (job, again):
        assert wait_for_job(lambda i: job_api(client, i), submitted["id"])["status"] == "succeeded"
    deliveries = eventually(lambda: deliveries_settled(client, job["id"], 2), what="both deliveries")
    eventually(lambda: deliveries_settled(client, again["id"], 2), what="the second job's deliveries")

    started = receiver.of(job_id=job["id"], type_="job.started")
    completed = receiver.of(job_id=job["id"], type_="job.completed")
    assert [r.path for r in started] == ["/job"] and [r.path for r in completed] == ["/standing"]  # filters
    payload = verify(job_secret, started[0])
    assert payload["data"]["status"] == "encoding"  # the job as it was when it started
    for secret in (new_secret, old_secret):  # rotation: both signatures verify during the overlap
        payload = verify(secret, completed[0])
    assert len(completed[0].headers["webhook-signature"].split(" ")) == 2
    assert payload["type"] == "job.completed" and re.match(r"\d{4}-\d\d-\d\dT.*Z$", payload["timestamp"])
    assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "succeeded"
    assert payload["data"]["links"]["result"].endswith(f"/api/v1/jobs/{job['id']}/result")
    assert len(completed[0].body) < 10_000  # links, never image bytes

    assert {(d["event"], d["status"], d["attempts"], d["last_status_code"]) for d in deliveries} == {
        ("job.started", "delivered", 1, 200), ("job.completed", "delivered", 1, 200)}
    assert all(d["last_latency_ms"] is not None and d["webhook_id"].startswith("msg_") for d in deliveries)
    page = client.get(f"/jobs/{job['id']}")
    assert b"Webhook deliveries" in page.data and receiver.url("/standing").encode() in page.data


def test_a_receiver_that_fails_three_times_then_recovers_gets_the_event(client, workers, receivers, endpoints):
    receiver = receivers(lambda n, req: (500, {}, 0.0) if n <= 3 else (200, {}, 0.0))
    job = submit(client, webhook_url=receiver.url(), webhook_events="job.completed")
    endpoints.append(job["webhook"]["endpoint_id"])
    (delivery,) = eventually(lambda: deliveries_settled(client, job["id"], 1), what="the delivery to settle")
    assert delivery["status"] == "delivered" and delivery["attempts"] == 4 and delivery["last_status_code"] == 200
    assert len(receiver.requests) == 4
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1  # one event, one id to dedupe on
    assert verify(job["webhook"]["secret"], receiver.requests[-1])["data"]["id"] == job["id"]
    detail = client.get(f"/api/v1/deliveries/{delivery['id']}").get_json()
    assert [a["status_code"] for a in detail["attempt_log"]] == [500, 500, 500, 200]
    gaps = [b["at"] - a["at"] for a, b in zip(detail["attempt_log"], detail["attempt_log"][1:])]
    assert all(gap >= 0.09 for gap in gaps)  # backed off (test settings: base 0.2 s, jitter ×½–1)


def test_a_receiver_down_for_the_whole_budget_is_dead_lettered_then_redelivered(client, workers, receivers,
                                                                               endpoints):
    port = free_port()  # nothing listens here yet
    url = f"http://127.0.0.1:{port}/hook"
    created = client.post("/api/v1/webhooks", json={"url": url, "events": ["job.completed"]}).get_json()
    endpoints.append(created["id"])
    job = submit(client, webhook_url=f"http://127.0.0.1:{port}/per-job", webhook_events="job.completed")
    endpoints.append(job["webhook"]["endpoint_id"])
    deliveries = eventually(lambda: deliveries_settled(client, job["id"], 2), what="both deliveries to die")
    assert {d["status"] for d in deliveries} == {"dead"} and {d["attempts"] for d in deliveries} == {4}
    assert all("could not connect" in d["last_error"] for d in deliveries)
    dead = client.get("/api/v1/deliveries/dead").get_json()["deliveries"]
    assert {d["id"] for d in deliveries} <= {d["id"] for d in dead}
    page = client.get("/settings/webhooks")
    assert all(d["id"].encode() in page.data for d in deliveries) and b"Redeliver" in page.data

    receiver = receivers(port=port)  # the receiver is back
    by_api, by_page = sorted(deliveries, key=lambda d: d["url"])  # /hook (standing), /per-job
    response = client.post(f"/api/v1/deliveries/{by_api['id']}/redeliver")
    assert response.status_code == 202 and response.get_json()["status"] == "pending"
    csrf = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
    response = client.post(f"/settings/webhooks/deliveries/{by_page['id']}/redeliver", data={"csrf_token": csrf})
    assert response.status_code == 303

    delivered = eventually(lambda: deliveries_settled(client, job["id"], 2), what="the redeliveries")
    assert {d["status"] for d in delivered} == {"delivered"} and {d["attempts"] for d in delivered} == {5}
    assert sorted(r.path for r in receiver.requests) == ["/hook", "/per-job"]
    assert {r.headers["webhook-id"] for r in receiver.requests} == {d["webhook_id"] for d in deliveries}
    by_path = {r.path: r for r in receiver.requests}
    verify(created["secret"], by_path["/hook"])
    verify(job["webhook"]["secret"], by_path["/per-job"])
    left = {d["id"] for d in client.get("/api/v1/deliveries/dead").get_json()["deliveries"]}
    assert not left & {d["id"] for d in deliveries}


def test_410_disables_the_endpoint(client, workers, receivers, endpoints):
    receiver = receivers(lambda n, req: (410, {}, 0.0))
    created = client.post("/api/v1/webhooks", json={"url": receiver.url(), "events": ["job.started", "job.completed"]})
    endpoint = created.get_json()
    endpoints.append(endpoint["id"])
    job = submit(client)
    wait_for_job(lambda i: job_api(client, i), job["id"])
    deliveries = eventually(lambda: deliveries_settled(client, job["id"], 1), what="deliveries to settle")
    time.sleep(0.3)
    assert len(receiver.requests) == 1 and receiver.requests[0].payload["type"] == "job.started"
    by_event = {d["event"]: d for d in job_api(client, job["id"])["deliveries"]}
    assert by_event["job.started"]["status"] == "dead" and "410" in by_event["job.started"]["last_error"]
    if "job.completed" in by_event:  # emitted before the 410 came back: dead-lettered, never sent
        assert by_event["job.completed"]["status"] == "dead" and "disabled" in by_event["job.completed"]["last_error"]
    shown = client.get(f"/api/v1/webhooks/{endpoint['id']}").get_json()
    assert shown["disabled"] and "410" in shown["disabled_reason"]
    conflict = client.post(f"/api/v1/deliveries/{by_event['job.started']['id']}/redeliver")
    assert conflict.status_code == 409 and "enable it first" in conflict.get_json()["error"]["message"]

    later = submit(client, name="coffee")
    wait_for_job(lambda i: job_api(client, i), later["id"])
    time.sleep(0.5)
    assert job_api(client, later["id"])["deliveries"] == [] and len(receiver.requests) == 1
    assert client.post(f"/api/v1/webhooks/{endpoint['id']}/enable").get_json()["disabled"] is False


def test_a_slow_receiver_blocks_no_other_delivery_and_no_stage(client, workers, receivers, endpoints):
    slow = receivers(lambda n, req: (200, {}, 6.0))  # longer than the 2 s attempt timeout
    fast = receivers()
    slow_jobs = [submit(client, name=name, webhook_url=slow.url(), webhook_events="*")
                 for name in ("astronaut", "coffee", "chelsea")]
    endpoints.append(slow_jobs[0]["webhook"]["endpoint_id"])
    eventually(lambda: len(slow.requests) >= 3, what="the slow receiver to be busy")

    started = time.monotonic()
    job = submit(client, name="astronaut", webhook_url=fast.url(), webhook_events="job.completed")
    endpoints.append(job["webhook"]["endpoint_id"])
    done = wait_for_job(lambda i: job_api(client, i), job["id"], timeout_s=30)
    assert done["status"] == "succeeded"
    eventually(lambda: fast.of(job_id=job["id"], type_="job.completed"), timeout_s=5, what="the fast delivery")
    elapsed = time.monotonic() - started
    assert elapsed < 8, f"the fast job and its webhook took {elapsed:.1f} s behind a slow receiver"
    for slow_job in slow_jobs:  # their own stages ran on, whatever their webhook did
        assert wait_for_job(lambda i: job_api(client, i), slow_job["id"], timeout_s=30)["status"] == "succeeded"
    pending = [d for j in slow_jobs for d in job_api(client, j["id"])["deliveries"] if d["status"] == "pending"]
    assert pending, "the slow receiver's deliveries are still being retried"
    eventually(lambda: any("within 2 s" in (d["last_error"] or "")  # its attempts time out and are retried
                           for j in slow_jobs for d in job_api(client, j["id"])["deliveries"]),
               timeout_s=8, what="a timed-out attempt to be logged")


def test_batch_completed_once_and_each_jobs_events_in_order(client, workers, receivers, endpoints):
    receiver = receivers()
    files = [(io.BytesIO(encode(photo(name, size=64))), f"{name}.png") for name in ("astronaut", "coffee", "chelsea")]
    response = client.post("/api/v1/batches", data={"images": files, "style": "sketch", "size": "64",
                                                    "webhook_url": receiver.url()},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    batch = response.get_json()
    secret = batch["webhook"]["secret"]
    endpoints.append(batch["webhook"]["endpoint_id"])
    eventually(lambda: receiver.of(type_="batch.completed"), what="batch.completed")
    job_ids = [j["id"] for j in batch["jobs"]]
    eventually(lambda: all(deliveries_settled(client, j, 2) for j in job_ids), what="every job's deliveries")
    time.sleep(0.3)  # room for a duplicate to show up, if there were one

    (completed,) = receiver.of(type_="batch.completed")
    payload = verify(secret, completed)
    assert payload["data"]["id"] == batch["id"] and payload["data"]["status"] == "done"
    assert payload["data"]["counts"] == {"succeeded": 3}
    for job_id in job_ids:
        seen = [r.payload["type"] for r in receiver.requests if r.payload["data"].get("id") == job_id]
        assert seen == ["job.started", "job.completed"], seen  # once each, in order
    batch_view = client.get(f"/api/v1/batches/{batch['id']}").get_json()
    assert [d["event"] for d in batch_view["deliveries"]] == ["batch.completed"]


# --- the outbound guard at submit time ---------------------------------------------------------

FORBIDDEN = ["http://127.0.0.1/", "http://localhost:8080/", "http://[::1]/", "http://[::]/", "http://[fe80::1]/",
             "http://[fc00::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.0.0.1]/", "http://0.0.0.0/",
             "http://169.254.169.254/latest/meta-data/", "http://224.0.0.1/", "http://240.0.0.1/",
             "http://100.64.0.1/", "http://10.1.2.3/", "http://192.168.0.10/", "http://2130706433/",
             "http://0x7f000001/", "http://017700000001/", "http://127.1/", "http://0x7f.1/"]


@pytest.fixture
def strict_client(redis_server):
    from tasks.settings import get_settings
    from web import create_app

    app = create_app(get_settings().model_copy(update={"webhook_allow_private": False}))
    app.config["TESTING"] = True
    return app.test_client()


@pytest.mark.parametrize("url", FORBIDDEN)
def test_forbidden_addresses_are_refused_at_submit(strict_client, redis_client, url):
    before = len(redis_client.keys("pixelmill:job:*"))
    response = strict_client.post("/api/v1/jobs", data={"image": (io.BytesIO(encode(photo(size=64))), "a.png"),
                                                        "webhook_url": url}, content_type="multipart/form-data")
    error = response.get_json()["error"]
    assert response.status_code == 422 and error["code"] == "webhook_url_refused", error
    assert "PIXELMILL_WEBHOOK_ALLOW_PRIVATE" in error["message"]
    assert len(redis_client.keys("pixelmill:job:*")) == before  # nothing was queued
    response = strict_client.post("/api/v1/webhooks", json={"url": url})
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "webhook_url_refused"


def test_bad_subscriptions_are_clear_errors(strict_client):
    image = lambda: (io.BytesIO(encode(photo(size=64))), "a.png")  # noqa: E731
    cases = [({"webhook_url": "ftp://93.184.216.34/"}, 422, "only http and https"),
             ({"webhook_url": "http://93.184.216.34/", "webhook_events": "job.done"}, 422, "unknown webhook event"),
             ({"webhook_events": "job.completed"}, 400, "without webhook_url")]
    for fields, status, fragment in cases:
        response = strict_client.post("/api/v1/jobs", data={"image": image(), **fields},
                                      content_type="multipart/form-data")
        assert response.status_code == status and fragment in response.get_json()["error"]["message"]
    response = strict_client.post("/api/v1/batches", data={"images": [image()], "webhook_url": "http://127.1/"},
                                  content_type="multipart/form-data")
    assert response.status_code == 422


def test_endpoints_and_deliveries_belong_to_their_tenant(client, redis_server, endpoints):
    from tasks.settings import get_settings
    from web import create_app

    created = client.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}).get_json()
    endpoints.append(created["id"])
    assert len(created["events"]) == 6  # no filter given: every event
    bad = client.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["job.done"]})
    assert bad.status_code == 422 and "unknown webhook event" in bad.get_json()["error"]["message"]
    other = create_app(get_settings().model_copy(update={"default_tenant": "someone-else"})).test_client()
    for method, path in [("get", f"/api/v1/webhooks/{created['id']}"), ("delete", f"/api/v1/webhooks/{created['id']}"),
                         ("post", f"/api/v1/webhooks/{created['id']}/rotate"),
                         ("get", f"/api/v1/webhooks/{created['id']}/deliveries")]:
        response = getattr(other, method)(path)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found", path
    assert created["id"] not in {e["id"] for e in other.get("/api/v1/webhooks").get_json()["webhooks"]}


def test_settings_page_creates_rotates_and_deletes(client, endpoints):
    page = client.get("/settings/webhooks")
    assert page.status_code == 200 and b"Add an endpoint" in page.data
    csrf = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
    response = client.post("/settings/webhooks", data={"csrf_token": csrf, "url": "http://127.0.0.1:9/page",
                                                       "events": ["job.failed", "batch.completed"]})
    assert response.status_code == 201
    secret = re.search(rb'id="secret">(whsec_[^<]+)<', response.data).group(1).decode()
    (endpoint,) = [e for e in client.get("/api/v1/webhooks").get_json()["webhooks"] if e["url"].endswith("/page")]
    endpoints.append(endpoint["id"])
    assert endpoint["events"] == ["job.failed", "batch.completed"]
    assert secret.encode() not in client.get("/settings/webhooks").data  # shown once
    rotated = client.post(f"/settings/webhooks/{endpoint['id']}/rotate", data={"csrf_token": csrf})
    new_secret = re.search(rb'id="secret">(whsec_[^<]+)<', rotated.data).group(1).decode()
    assert new_secret != secret
    refused = client.post("/settings/webhooks", data={"csrf_token": csrf, "url": "gopher://x/"})
    assert refused.status_code == 422 and b"only http and https" in refused.data
    assert client.post(f"/settings/webhooks/{endpoint['id']}/delete", data={"csrf_token": csrf}).status_code == 303
    assert client.get(f"/api/v1/webhooks/{endpoint['id']}").status_code == 404


def test_the_upload_form_takes_a_webhook_and_shows_its_secret_once(client, workers, receivers, endpoints):
    receiver = receivers()
    page = client.get("/")
    assert b'name="webhook_url"' in page.data
    csrf = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
    form = {"csrf_token": csrf, "_form": "1", "style": "sketch", "size": "64", "webhook_url": receiver.url("/form"),
            "webhook_events": ["job.completed"], "images": (io.BytesIO(encode(photo(size=64))), "a.png")}
    response = client.post("/submit", data=form, content_type="multipart/form-data")
    assert response.status_code == 200 and b"not shown again" in response.data
    secret = re.search(rb'id="secret">(whsec_[^<]+)<', response.data).group(1).decode()
    job_url = re.search(rb'href="(/jobs/[0-9a-f]+)"', response.data).group(1).decode()
    job_id = job_url.rsplit("/", 1)[1]
    endpoints.append(job_api(client, job_id)["webhook"]["endpoint_id"])
    (delivered,) = eventually(lambda: receiver.of(job_id=job_id), what="the form job's webhook")
    assert verify(secret, delivered)["type"] == "job.completed"
    again = client.post("/submit", data={**form, "images": (io.BytesIO(encode(photo("coffee", size=64))), "b.png")},
                        content_type="multipart/form-data")
    assert again.status_code == 303  # the URL is known: no new secret to show, straight to the job
    wait_for_job(lambda i: job_api(client, i), again.headers["Location"].rsplit("/", 1)[1])
