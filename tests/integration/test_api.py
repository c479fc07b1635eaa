"""The JSON API's edges: errors are JSON with a message, nothing is queued on bad input."""

from __future__ import annotations

import io
import json

import pytest

from tasks.store import store_key
from tests.conftest import encode, photo

pytestmark = pytest.mark.integration


def _jobs_in_store(redis_client) -> int:
    return len(redis_client.keys(store_key("job", "*")))


@pytest.mark.parametrize(("data", "status", "code", "fragment"), [
    ({}, 400, "bad_request", "'image'"),
    ({"image": (io.BytesIO(b"GIF89a" + b"\0" * 40), "x.png")}, 422, None, "PNG, JPEG or WebP"),
    ({"image": (io.BytesIO(b""), "empty.png")}, 422, "empty_file", ""),
    ({"params": json.dumps({"steps": 0})}, 422, "invalid_parameters", "steps"),
    ({"params": "{nope"}, 400, "bad_request", "not valid JSON"),
    ({"stepz": "3"}, 400, "bad_request", "unknown parameter 'stepz'"),
    ({"params": json.dumps({"engine": "diffusion", "steps": 1, "strength": 0.5})}, 422, "invalid_parameters", "raise steps"),
])
def test_bad_submissions_get_a_clear_error_and_queue_nothing(client, redis_client, data, status, code, fragment):
    if "image" not in data and status != 400 or data.get("stepz") or data.get("params") == "{nope":
        data = {**data, "image": (io.BytesIO(encode(photo(size=64))), "ok.png")}
    before = _jobs_in_store(redis_client)
    response = client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")
    body = response.get_json()
    assert response.status_code == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    if code:
        assert body["error"]["code"] == code
    assert fragment in body["error"]["message"]
    assert _jobs_in_store(redis_client) == before


def test_one_bad_file_refuses_the_whole_batch(client, redis_client):
    before = _jobs_in_store(redis_client)
    files = [(io.BytesIO(encode(photo(size=64))), "good.png"), (io.BytesIO(b"not an image"), "bad.jpg")]
    response = client.post("/api/v1/batches", data={"images": files}, content_type="multipart/form-data")
    assert response.status_code == 422
    assert response.get_json()["error"]["message"].startswith("bad.jpg:")
    assert _jobs_in_store(redis_client) == before


def test_unknown_ids_are_404_json(client):
    for path in ("/api/v1/jobs/nope", "/api/v1/jobs/nope/result", "/api/v1/batches/nope"):
        response = client.get(path)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    assert client.get("/jobs/nope").status_code == 404


def test_submission_returns_at_once_without_workers(client):
    """No worker consumes here: 202 anyway, the job waits queued."""
    response = client.post("/api/v1/jobs", data={"image": (io.BytesIO(encode(photo(size=64))), "a.png")},
                           content_type="multipart/form-data")
    assert response.status_code == 202 and response.get_json()["status"] == "queued"


def test_healthz_and_pages(client):
    assert client.get("/healthz").get_json() == {"status": "ok", "redis": "ok", "restarts": {}}
    for page in ("/", "/gallery"):
        response = client.get(page)
        assert response.status_code == 200 and b"pixelmill" in response.data
