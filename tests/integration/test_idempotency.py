"""Idempotent submits: a retried POST with the same Idempotency-Key answers what the first one
made; the same key for another request is refused; `pixelmill submit`'s client sends one."""

from __future__ import annotations

import io
import threading
import uuid
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from client.http import ApiClient
from tasks.store import store_key
from tests.conftest import encode, photo, routes_to

pytestmark = pytest.mark.integration

PARKED = "idempotency-parked"  # stage messages go to a queue nobody consumes: nothing runs


@pytest.fixture
def app(redis_server):
    from tasks.settings import Settings
    from web import create_app

    flask_app = create_app(Settings(routes=routes_to(PARKED)))
    flask_app.config["TESTING"] = True
    return flask_app


def _jobs(redis_client) -> int:
    return len(redis_client.keys(store_key("job", "*")))


def _post_job(client, key: str | None, *, image: bytes, style: str = "sketch"):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/api/v1/jobs", headers=headers, content_type="multipart/form-data",
                       data={"image": (io.BytesIO(image), "p.png"), "style": style})


def test_a_retried_job_submit_answers_the_first_job(app, redis_client):
    client, image, key = app.test_client(), encode(photo(size=64)), str(uuid.uuid4())
    before = _jobs(redis_client)
    first, again = _post_job(client, key, image=image), _post_job(client, key, image=image)
    assert first.status_code == again.status_code == 202, (first.get_json(), again.get_json())
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert _jobs(redis_client) == before + 1
    other = _post_job(client, str(uuid.uuid4()), image=image)  # a new key is a new request
    assert other.get_json()["id"] != first.get_json()["id"] and _jobs(redis_client) == before + 2
    assert _post_job(client, None, image=image).status_code == 202  # no key: as before


def test_the_same_key_for_another_request_is_refused(app, redis_client):
    client, image, key = app.test_client(), encode(photo(size=64)), str(uuid.uuid4())
    assert _post_job(client, key, image=image).status_code == 202
    before = _jobs(redis_client)
    for different in (dict(image=image, style="cartoon"), dict(image=encode(photo("coffee", size=64)))):
        answer = _post_job(client, key, **different)
        assert answer.status_code == 422 and answer.get_json()["error"]["code"] == "idempotency_key_reused"
    assert _jobs(redis_client) == before
    assert _post_job(client, "x" * 300, image=image).status_code == 400


def test_a_refused_first_request_frees_its_key(app, redis_client):
    client, key = app.test_client(), str(uuid.uuid4())
    bad = client.post("/api/v1/jobs", headers={"Idempotency-Key": key}, content_type="multipart/form-data",
                      data={"image": (io.BytesIO(b"not an image"), "p.png")})
    assert bad.status_code == 422
    assert _post_job(client, key, image=encode(photo(size=64))).status_code == 202


def test_a_retried_batch_answers_the_first_batch(app, redis_client):
    client, key = app.test_client(), str(uuid.uuid4())
    files = [encode(photo(name, size=64)) for name in ("astronaut", "coffee")]

    def post():
        return client.post("/api/v1/batches", headers={"Idempotency-Key": key}, content_type="multipart/form-data",
                           data={"images": [(io.BytesIO(f), f"{i}.png") for i, f in enumerate(files)]})

    before = _jobs(redis_client)
    first, again = post(), post()
    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"]
    assert [j["id"] for j in again.get_json()["jobs"]] == [j["id"] for j in first.get_json()["jobs"]]
    assert _jobs(redis_client) == before + 2


def test_the_submit_client_sends_a_key_so_a_retry_never_duplicates(app, redis_client):
    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = ApiClient(f"http://127.0.0.1:{server.server_port}")
        files = [("a.png", encode(photo(size=64)))]
        before = _jobs(redis_client)
        first = api.create_batch(files, params={"style": "sketch"}, idempotency_key="k-1")
        again = api.create_batch(files, params={"style": "sketch"}, idempotency_key="k-1")  # as after a lost answer
        assert again["id"] == first["id"] and _jobs(redis_client) == before + 1
    finally:
        server.shutdown()

