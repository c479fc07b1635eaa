"""Quality scores and the per-tenant quality policy through the API, on the session's real workers
and the tiny library (its CLIP scores in audit): the CLIPScore on the job, in its webhook, in
/metrics and on the dashboard; a policy that regenerates (all attempts recorded, the best kept), one
that flags and one that fails; the CLI that sets it; and the 422 when no CLIP model is configured."""

from __future__ import annotations

import io
import json
import time

import pytest

from safety.quality_policy import QualityAction, QualityPolicy
from tasks.settings import Settings
from tasks.store import store_key
from tests.conftest import encode, photo, wait_for_job
from tests.integration.test_webhooks import Receiver

pytestmark = pytest.mark.integration

FAST = {"engine": "diffusion", "strength": 0.75, "steps": 4, "size": 64}
TENANTS = ("q-plain", "q-regen", "q-flag", "q-fail")
UNREACHABLE = 100.0  # a CLIPScore no result reaches (cos = 1)
METRICS_TOKEN = "quality-scores-metrics"


def _app(**overrides):
    from web import create_app

    app = create_app(Settings(**{"auth_enabled": True, **overrides}))
    app.config["TESTING"] = True
    return app


@pytest.fixture(scope="module")
def secure_app(redis_server, tiny_model):
    return _app(metrics_token=METRICS_TOKEN)


@pytest.fixture(scope="module")
def tenants(secure_app):
    """A tenant per policy with an admin key each; returns {tenant: headers}."""
    store = secure_app.extensions["pixelmill"].tenants
    keys = {}
    for tenant in TENANTS:
        _, plaintext = store.create_key(tenant=tenant, admin=True)
        keys[tenant] = {"Authorization": f"Bearer {plaintext}"}
    store.save_quality_policy("q-regen", QualityPolicy(metric="clipscore", threshold=UNREACHABLE,
                                                       action=QualityAction.REGENERATE, max_retries=2))
    store.save_quality_policy("q-flag", QualityPolicy(metric="clipscore", threshold=UNREACHABLE))
    store.save_quality_policy("q-fail", QualityPolicy(metric="clipscore", threshold=UNREACHABLE,
                                                      action=QualityAction.FAIL))
    yield keys
    for tenant in TENANTS:
        store.redis.delete(store_key("tenant", tenant, "quality_policy"))


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


def _submit(client, headers, image: bytes, **fields):
    params = {k: v for k, v in fields.items() if not k.startswith("webhook_")}
    hooks = {k: v for k, v in fields.items() if k.startswith("webhook_")}
    return client.post("/api/v1/jobs", headers=headers, content_type="multipart/form-data",
                       data={"image": (io.BytesIO(image), "photo.png"), "params": json.dumps(params), **hooks})


def _run(client, headers, image: bytes, **fields) -> dict:
    response = _submit(client, headers, image, **fields)
    assert response.status_code == 202, response.get_json()
    return wait_for_job(lambda i: client.get(f"/api/v1/jobs/{i}", headers=headers).get_json(),
                        response.get_json()["id"], timeout_s=240)


def _page(app, headers, job_id: str) -> str:
    """The job's page, for the tenant of ``headers`` (pages take a login session, not a header)."""
    client = app.test_client()
    key = app.extensions["pixelmill"].tenants.resolve(headers["Authorization"].removeprefix("Bearer "))
    with client.session_transaction() as session:
        session["tenant"], session["key_id"] = key.tenant, key.id
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def _completed(receiver: Receiver, job_id: str, *, timeout_s: float = 30) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [r for r in receiver.of(job_id=job_id) if r.payload["type"] in ("job.completed", "job.failed")]
        if found:
            time.sleep(1.0)  # a second delivery, if there were one, would come now
            return [r for r in receiver.of(job_id=job_id)]
        time.sleep(0.1)
    raise AssertionError(f"no terminal webhook for job {job_id}")


def test_a_diffusion_job_records_its_clipscore_on_the_job_in_its_webhook_metrics_and_dashboard(
        secure_app, tenants, workers, receiver, app) -> None:
    client, headers = secure_app.test_client(), tenants["q-plain"]
    job = _run(client, headers, encode(photo("astronaut", size=64)), prompt="an astronaut", seed=3,
               webhook_url=receiver.url(), webhook_events="job.completed", **FAST)
    assert job["status"] == "succeeded", job
    scores = job["audit"]["scores"]
    assert 0.0 <= scores["clipscore"] <= 100.0 and scores["sharpness"] > 0 and 0 <= scores["phash_distance"] <= 64
    assert "quality" not in job["audit"] and "attempts" not in job  # no policy: recorded, not judged
    delivered = _completed(receiver, job["id"])
    assert [r.payload["type"] for r in delivered] == ["job.completed"]
    assert delivered[0].payload["data"]["audit"]["scores"]["clipscore"] == scores["clipscore"]

    style = _run(client, headers, encode(photo("coffee", size=64)), style="sketch", size=64)
    assert style["status"] == "succeeded" and "clipscore" not in style["audit"]["scores"]
    assert style["audit"]["scores"]["sharpness"] > 0  # every job gets the cheap signals

    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).get_data(as_text=True)
    assert "pixelmill_clipscore_bucket" in metrics and "pixelmill_sharpness_bucket" in metrics
    count = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("pixelmill_clipscore_count"))
    assert count >= 1
    stats = client.get("/api/v1/stats", headers=headers).get_json()
    assert stats["quality"]["clipscore"]["jobs_last_hour"] >= 1
    assert stats["quality"]["clipscore"]["median_last_hour"] is not None
    page = app.test_client().get("/dashboard").get_data(as_text=True)  # auth off: the whole service's figures
    assert 'id="median-clipscore"' in page and "Median CLIPScore" in page


def test_a_regenerate_policy_retries_with_new_seeds_keeps_the_best_and_records_every_attempt(
        secure_app, tenants, workers, receiver) -> None:
    client, headers = secure_app.test_client(), tenants["q-regen"]
    job = _run(client, headers, encode(photo("chelsea", size=64)), prompt="a cat", seed=7,
               webhook_url=receiver.url(), webhook_events="*", **FAST)
    assert job["status"] == "succeeded", job
    attempts = job["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]  # the first and max_retries=2 regenerations
    assert attempts[0]["seed"] == 7 and len({a["seed"] for a in attempts}) == 3
    assert [a["outcome"] for a in attempts] == ["regenerate", "regenerate", "flag"]
    best = max(attempts, key=lambda a: a["scores"]["clipscore"])
    assert [a["kept"] for a in attempts] == [a is best for a in attempts]
    quality = job["audit"]["quality"]
    assert quality["kept"] == best["attempt"] and quality["score"] == best["scores"]["clipscore"]
    assert quality["outcome"] == "flag" and job["audit"]["verdict"] == "flag"
    assert job["audit"]["scores"]["clipscore"] == best["scores"]["clipscore"]
    assert job["params"]["seed"] == best["seed"]  # the seed of the image served
    assert all(a["device_seconds"] for a in attempts if a["attempt"] < 3)  # their cost stays on the job
    assert job["stages"]["encode"]["attempts"] == 1  # a retry restarts at generate: encode ran once

    rt = secure_app.extensions["pixelmill"]
    record = rt.store.fetch(job["id"])
    assert record.outputs["result"] == best["result"]
    served = client.get(job["links"]["result"], headers=headers).data
    assert served == rt.blobs.fetch(best["result"])
    assert [a["result"] for a in attempts] == [a["result"] for a in record.attempts]

    events = [r.payload["type"] for r in _completed(receiver, job["id"])]
    assert events.count("job.completed") == 1 and events.count("job.started") == 1, events

    page = _page(secure_app, headers, job["id"])  # the scores, the judgement and every attempt on the job page
    audit_line = page[page.index('id="audit"'):page.index("</div>", page.index('id="audit"'))]
    assert f"CLIPScore {best['scores']['clipscore']:.2f}" in audit_line and "sharpness" in audit_line
    assert "pHash distance" in audit_line
    assert 'id="quality"' in page and "<strong>flag</strong>" in page and quality["reason"] in page
    assert f"kept attempt {best['attempt']}" in page
    rows = [row.split("</tr>")[0] for row in page.split("<tr data-attempt=")[1:]]
    assert len(rows) == 3 and all(f"<code>{a['seed']}</code>" in row and a["outcome"] in row
                                  and f"CLIPScore {a['scores']['clipscore']:.2f}" in row
                                  for a, row in zip(attempts, rows, strict=True))
    assert ["<strong>kept</strong>" in row for row in rows] == [a["kept"] for a in attempts]


def test_a_flag_policy_flags_and_a_fail_policy_fails_with_its_code(secure_app, tenants, workers) -> None:
    image = encode(photo("rocket", size=64))
    client = secure_app.test_client()
    flagged = _run(client, tenants["q-flag"], image, prompt="a rocket", seed=1, **FAST)
    assert flagged["status"] == "succeeded" and flagged["audit"]["verdict"] == "flag"
    assert flagged["audit"]["quality"]["outcome"] == "flag" and "attempts" not in flagged
    assert any("below the threshold" in reason for reason in flagged["audit"]["reasons"])

    failed = _run(client, tenants["q-fail"], image, prompt="a rocket", seed=1, **FAST)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "quality_below_threshold"
    assert "clipscore" in failed["error"]["message"] and "below the threshold 100" in failed["error"]["message"]
    assert failed["audit"]["scores"]["clipscore"] < UNREACHABLE  # the scores stay on the failed job
    assert client.get(f"/api/v1/jobs/{failed['id']}/result", headers=tenants["q-fail"]).status_code != 200

    # A style job has no prompt: a CLIPScore policy does not judge it.
    style = _run(client, tenants["q-fail"], image, style="cartoon", size=64)
    assert style["status"] == "succeeded" and style["audit"]["quality"]["outcome"] == "unscored"


def test_the_cli_sets_a_tenants_quality_policy(secure_app, redis_server) -> None:
    from stack.cli import main

    store = secure_app.extensions["pixelmill"].tenants
    try:
        assert main(["policy", "--tenant", "q-cli", "--quality-metric", "sharpness", "--quality-threshold", "150",
                     "--quality-action", "regenerate", "--quality-retries", "3"]) == 0
        assert store.quality_policy("q-cli", default=None) == QualityPolicy(
            metric="sharpness", threshold=150.0, action=QualityAction.REGENERATE, max_retries=3)
        assert main(["policy", "--tenant", "q-cli", "--quality-action", "fail"]) == 0  # the rest stays
        assert store.quality_policy("q-cli", default=None).action is QualityAction.FAIL
        assert main(["policy", "--tenant", "q-cli", "--quality-metric", "off"]) == 0
        assert store.quality_policy("q-cli", default=QualityPolicy(metric="sharpness", threshold=1.0)) is None
    finally:
        store.clear_quality_policy("q-cli")


def test_without_a_clip_model_a_policy_or_threshold_that_needs_one_is_refused_at_submit(tenants, tiny_model) -> None:
    client = _app(clip_model="").test_client()
    image = encode(photo("coffee", size=64))
    for headers, extra in ((tenants["q-regen"], {}), (tenants["q-plain"], {"min_clipscore": 20})):
        response = _submit(client, headers, image, prompt="a cup", **FAST, **extra)
        assert response.status_code == 422, response.get_json()
        error = response.get_json()["error"]
        assert error["code"] == "clip_unavailable" and "PIXELMILL_CLIP_MODEL" in error["message"], error
    style = _submit(client, tenants["q-plain"], image, style="sketch", min_clipscore=20)
    assert style.status_code == 422 and "needs a diffusion job with a prompt" in style.get_json()["error"]["message"]
    # the same tenant's jobs that CLIPScore would not judge are taken
    assert _submit(client, tenants["q-regen"], image, style="sketch", size=64).status_code == 202
