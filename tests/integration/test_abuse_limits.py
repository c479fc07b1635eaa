"""Abuse limits against the real app and a private Redis (no workers: submissions go to a queue
nobody consumes, and jobs are moved with the store's own transitions): the cap on webhook endpoints
and one spelling per URL, per-route body limits, the batch cap, how a batch counts against the rate
and the cap on unfinished jobs, per-tenant figures, and /metrics behind its token when auth is on."""

from __future__ import annotations

import io
import json
import secrets

import pytest

from tasks.jobs import JobStatus
from tasks.settings import STAGES, Settings
from tasks.store import store_key
from tests.conftest import encode, photo, routes_to

pytestmark = pytest.mark.integration

PARKED = routes_to("limits-parked")


def _app(**overrides):
    from web import create_app

    app = create_app(Settings(**{"auth_enabled": True, "routes": PARKED, **overrides}))
    app.config["TESTING"] = True
    return app


def _tenant(app, name: str, *, admin: bool = False) -> tuple[str, dict[str, str]]:
    tenant = f"{name}-{secrets.token_hex(3)}"
    _, plaintext = app.extensions["pixelmill"].tenants.create_key(tenant=tenant, admin=admin)
    return tenant, {"Authorization": f"Bearer {plaintext}"}


def _files(n: int, *, size: int = 32) -> list[tuple[io.BytesIO, str]]:
    return [(io.BytesIO(encode(photo(size=size + i))), f"p{i}.png") for i in range(n)]


def _batch(client, headers, n: int):
    return client.post("/api/v1/batches", headers=headers, content_type="multipart/form-data",
                       data={"images": _files(n), "style": "sketch"})


def _job(client, headers, **fields):
    return client.post("/api/v1/jobs", headers=headers, content_type="multipart/form-data",
                       data={"image": _files(1)[0], "style": "sketch", **fields})


# --- webhook endpoints ------------------------------------------------------------------------------

def test_standing_webhook_endpoints_are_capped(redis_server):
    app = _app(webhook_max_endpoints=3)
    client, (_, headers) = app.test_client(), _tenant(app, "hooks")
    made = [client.post("/api/v1/webhooks", headers=headers, json={"url": f"http://127.0.0.1:9/h{i}"})
            for i in range(4)]
    assert [r.status_code for r in made] == [201, 201, 201, 422], [r.get_json() for r in made]
    error = made[-1].get_json()["error"]
    assert error["code"] == "too_many_webhooks" and "PIXELMILL_WEBHOOK_MAX_ENDPOINTS=3" in error["message"]
    first = made[0].get_json()["id"]
    assert client.delete(f"/api/v1/webhooks/{first}", headers=headers).status_code == 200
    again = client.post("/api/v1/webhooks", headers=headers, json={"url": "http://127.0.0.1:9/again"})
    assert again.status_code == 201, again.get_json()


def test_two_spellings_of_one_url_are_one_endpoint(redis_server):
    app = _app()
    client, (tenant, headers) = app.test_client(), _tenant(app, "spell")
    first = _job(client, headers, webhook_url="http://LOCALHOST:80/x#y")
    second = _job(client, headers, webhook_url="http://localhost/x")
    assert first.status_code == second.status_code == 202, (first.get_json(), second.get_json())
    a, b = first.get_json()["webhook"], second.get_json()["webhook"]
    assert a["endpoint_id"] == b["endpoint_id"] and a["url"] == b["url"] == "http://localhost/x"
    assert "secret" in a and "secret" not in b  # the same endpoint: its secret was shown once
    assert len(app.extensions["pixelmill"].webhooks.list_endpoints(tenant)) == 1


def test_endpoints_made_before_the_cap_do_not_all_hear_an_event(redis_server):
    """Stored as an older version wrote them (no cap, URLs as given): one POST per URL, at most the cap."""
    from tasks.events import JobEvent
    from tasks.webhooks.dispatch import targets
    from tasks.webhooks.models import Endpoint

    store, tenant = _app().extensions["pixelmill"].webhooks, f"legacy-{secrets.token_hex(3)}"
    for i, url in enumerate(["http://LOCALHOST:80/x", "http://localhost/x#frag", "http://127.0.0.1:9/a",
                             "http://127.0.0.1:9/b", "http://127.0.0.1:9/c"]):
        endpoint = Endpoint.create(tenant=tenant, url=url, events=["job.completed"], secret="whsec_x")
        endpoint.created_at += i
        store.create_endpoint(endpoint)
    event = JobEvent.create(type="job.completed", tenant=tenant, subject="j", job_id="j", batch_id=None, snapshot={})
    assert [e.url for e in targets(store, event)] == ["http://LOCALHOST:80/x", "http://127.0.0.1:9/a",
                                                      "http://127.0.0.1:9/b", "http://127.0.0.1:9/c"]
    assert len(targets(store, event, max_standing=3)) == 2  # the oldest three, two of them one URL


# --- body limits --------------------------------------------------------------------------------------

def test_json_routes_take_64_kib_and_uploads_keep_their_limit(redis_server):
    app = _app()
    client, (_, headers) = app.test_client(), _tenant(app, "bodies")
    big_json = json.dumps({"url": "http://127.0.0.1:9/h", "description": "x" * 70_000})
    refused = client.post("/api/v1/webhooks", headers=headers, data=big_json, content_type="application/json")
    assert refused.status_code == 413, refused.get_data()
    assert refused.get_json()["error"]["message"].startswith("the request is too large")
    for path in ("/api/v1/keys", "/api/v1/webhooks/ep_x/rotate"):
        assert client.post(path, headers=headers, data=big_json, content_type="application/json").status_code == 413
    upload = encode(photo(size=512))  # a few hundred KiB: more than a JSON route takes
    assert len(upload) > 64 * 1024
    accepted = client.post("/api/v1/jobs", headers=headers, content_type="multipart/form-data",
                           data={"image": (io.BytesIO(upload), "big.png"), "style": "sketch"})
    assert accepted.status_code == 202, accepted.get_json()


# --- batches: the cap, the rate, unfinished jobs ---------------------------------------------------------

def test_the_batch_cap_says_its_number_and_setting(redis_server):
    app = _app(max_batch_files=2)
    client, (_, headers) = app.test_client(), _tenant(app, "cap")
    response = _batch(client, headers, 3)
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert "at most 2 per batch" in message and "PIXELMILL_MAX_BATCH_FILES" in message  # the CLI reads the number
    assert _batch(client, headers, 2).status_code == 202


def test_a_batch_is_one_submission_for_the_rate(redis_server):
    app = _app(rate_limit_per_minute=2)
    client, (tenant, headers) = app.test_client(), _tenant(app, "rate")
    for _ in range(2):  # the minute may turn between two calls: then once more
        codes = [_batch(client, headers, 3).status_code for _ in range(3)]
        if codes == [202, 202, 429]:
            break
    assert codes == [202, 202, 429]
    limited = _batch(client, headers, 1)
    assert limited.status_code == 429 and "PIXELMILL_RATE_LIMIT_PER_MINUTE" in limited.get_json()["error"]["message"]


def test_each_file_of_a_batch_counts_as_an_unfinished_job(redis_server):
    app = _app(max_active_jobs=4)
    client, (tenant, headers) = app.test_client(), _tenant(app, "active")
    assert _batch(client, headers, 3).status_code == 202
    over = _batch(client, headers, 2)  # 3 + 2 > 4: wait for some to finish
    assert over.status_code == 429 and int(over.headers["Retry-After"]) > 0
    assert "adds 2 (limit 4, PIXELMILL_MAX_ACTIVE_JOBS)" in over.get_json()["error"]["message"]
    never = _batch(client, headers, 5)  # more than the cap itself: could never pass, so no retry is suggested
    assert never.status_code == 400 and "at most 4 per batch" in never.get_json()["error"]["message"]
    assert _job(client, headers).status_code == 202  # 3 + 1 fits
    assert app.extensions["pixelmill"].redis.scard(store_key("active", tenant)) == 4


# --- whose figures ---------------------------------------------------------------------------------------

def _finish(rt, job_id: str) -> None:
    """Run a job's stages through the store's transitions, as workers would (2 s of cpu each)."""
    for stage in STAGES:
        rt.store.start_stage(job_id, stage, queue="cpu", worker="w@h")
        rt.store.finish_stage(job_id, stage, outputs={}, device_s=2.0,
                              end=JobStatus.SUCCEEDED if stage == STAGES[-1] else None)


def test_a_tenant_sees_its_own_figures_and_an_admin_sees_all(redis_server):
    operator = f"ops-{secrets.token_hex(3)}"
    app = _app(operator_tenant=operator)
    rt, client = app.extensions["pixelmill"], app.test_client()
    alpha, alpha_headers = _tenant(app, "alpha")
    beta, beta_headers = _tenant(app, "beta")
    _, plaintext = rt.tenants.create_key(tenant=operator, admin=True)
    admin_headers = {"Authorization": f"Bearer {plaintext}"}
    _, tenant_admin = _tenant(app, "gamma", admin=True)  # administers its own tenant only
    ids = [_job(client, alpha_headers).get_json()["id"] for _ in range(2)]
    _finish(rt, ids[0])

    mine = client.get("/api/v1/stats", headers=alpha_headers).get_json()
    assert mine["tenant"] == alpha
    assert mine["jobs"]["created_total"] == 2 and mine["jobs"]["finished_total"] == {"succeeded": 1}
    assert sum(mine["jobs"]["active"].values()) == 1
    assert mine["cost"]["images_total"] == 1
    assert mine["cost"]["total_usd"] == pytest.approx(len(STAGES) * 2.0 * 0.10 / 3600)
    assert mine["stages"]["encode"]["all_time"]["completed"] == 1
    assert set(mine["queues"]) >= {"cpu", "gpu", "io"}  # depths and workers: shared infrastructure

    theirs = client.get("/api/v1/stats", headers=beta_headers).get_json()
    assert theirs["tenant"] == beta
    assert theirs["jobs"]["created_total"] == 0 and theirs["jobs"]["finished_total"] == {}
    assert sum(theirs["jobs"]["active"].values()) == 0
    assert theirs["cost"]["total_usd"] == 0 and theirs["stages"]["encode"]["all_time"]["completed"] == 0
    assert theirs["cache"]["hits"] == 0 and theirs["cache"]["misses"] == 0

    everyone = client.get("/api/v1/stats", headers=admin_headers).get_json()
    assert everyone.get("tenant") is None and everyone["jobs"]["created_total"] >= 2
    own = client.get("/api/v1/stats", headers=tenant_admin).get_json()
    assert own["tenant"].startswith("gamma-") and own["jobs"]["created_total"] == 0

    page = _logged_in(app, beta_headers["Authorization"].removeprefix("Bearer ")).get("/dashboard")
    assert page.status_code == 200 and f"tenant {beta}" in page.get_data(as_text=True)


def _logged_in(app, plaintext: str):
    client = app.test_client()
    client.get("/login")
    with client.session_transaction() as session:
        token = session["csrf"]
    assert client.post("/login", data={"api_key": plaintext, "csrf_token": token}).status_code == 302
    return client


def test_with_auth_off_the_one_tenant_sees_everything(redis_server):
    app = _app(auth_enabled=False)
    stats = app.test_client().get("/api/v1/stats").get_json()
    assert stats.get("tenant") is None and stats["jobs"]["created_total"] >= 0


# --- /metrics ----------------------------------------------------------------------------------------------

def test_metrics_need_their_token_when_auth_is_on(redis_server):
    app = _app()
    _, admin_headers = _tenant(app, "scraper", admin=True)
    for headers in ({}, admin_headers):
        refused = app.test_client().get("/metrics", headers=headers)
        assert refused.status_code == 403 and "PIXELMILL_METRICS_TOKEN" in refused.get_data(as_text=True)
    scraped = _app(metrics_token="t0ken").test_client().get("/metrics", headers={"Authorization": "Bearer t0ken"})
    assert scraped.status_code == 200
    assert _app(auth_enabled=False).test_client().get("/metrics").status_code == 200  # one tenant: as before
