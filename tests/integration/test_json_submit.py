"""Submitting by JSON (docs/api.md): an image as a data URI or an https URL, on real workers.

URLs are fetched on the io queue. For the tests that fetch from this machine, an io worker of their
own runs with PIXELMILL_INPUT_ALLOW_PRIVATE=1 and this module's self-signed certificate as its only
trusted root (SSL_CERT_FILE: TLS is verified as in production), while the session's io worker stops
consuming the io queue; everything else runs with private addresses refused."""

from __future__ import annotations

import base64
import os
import socket
import struct
import zlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tasks.settings import Settings
from tests.conftest import encode, photo, routes_to, start_worker, stop_worker, wait_for_job, wait_worker_ready
from tests.image_server import ImageServer, body, endless, make_cert, redirect
from tests.unit.test_outbound import FORBIDDEN

pytestmark = pytest.mark.integration

SMALL = {"style": "sketch", "size": 64}


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def small_png(name: str = "astronaut") -> bytes:
    return encode(photo(name, size=64))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid tiny PNG whose header declares 10 gigapixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_app(**settings):
    from web import create_app

    app = create_app(Settings(**settings))
    app.config["TESTING"] = True
    return app


def fetcher(client):
    return lambda job_id: client.get(f"/api/v1/jobs/{job_id}").get_json()


# --- data URIs and the checks at submit (no worker needed for most) ---------------------------------

def test_a_json_job_with_a_data_uri_succeeds(client, workers):
    response = client.post("/api/v1/jobs", json={"image": data_uri(small_png()), **SMALL})
    assert response.status_code == 202, response.get_json()
    created = response.get_json()
    assert created["source"] == {"kind": "data_uri", "media_type": "image/png"}
    assert created["input_name"] == "image.png" and created["params"]["style"] == "sketch"
    job = wait_for_job(fetcher(client), created["id"])
    assert job["status"] == "succeeded", job
    assert client.get(f"/api/v1/jobs/{job['id']}/result").data.startswith(b"\x89PNG")


@pytest.mark.parametrize("url", FORBIDDEN)
def test_every_forbidden_spelling_is_refused_as_an_input_url(client, url):
    response = client.post("/api/v1/jobs", json={"image": "https://" + url.split("://", 1)[1], **SMALL})
    error = response.get_json()["error"]
    assert response.status_code == 422 and error["code"] == "input_url_refused", error
    assert "PIXELMILL_INPUT_ALLOW_PRIVATE" in error["message"]


@pytest.mark.parametrize(("image", "status", "code", "fragment"), [
    ("http://93.184.216.34/a.png", 422, "input_url_refused", "https only"),
    ("https://nowhere.invalid/a.png", 422, "input_unreachable", "could not be resolved"),
    ("data:image/png;base64,***", 400, "bad_request", "not valid base64"),
    ("data:text/html;base64,PGgxPg==", 400, "bad_request", "data:image/png;base64"),
    ("data:image/png;base64," + base64.b64encode(b"<html>hi</html>").decode(), 422, "unsupported_format", "HTML"),
    ("photo.jpg", 400, "bad_request", "https:// URL or a data:image"),
    (5, 400, "bad_request", "must be a string"),
])
def test_bad_image_values_are_refused_at_submit(client, image, status, code, fragment):
    response = client.post("/api/v1/jobs", json={"image": image, **SMALL})
    error = response.get_json()["error"]
    assert (response.status_code, error["code"]) == (status, code), error
    assert fragment in error["message"]


def test_json_bodies_are_validated_like_forms(client):
    cases = [({"image": data_uri(small_png()), "stlye": "sketch"}, 400, "unknown parameter 'stlye'"),
             ({"image": data_uri(small_png()), "steps": 0}, 422, "steps"),
             ({"images": [data_uri(small_png())]}, 400, "a job takes one image"),
             ({"style": "sketch"}, 400, "no image"),
             ({"image": data_uri(small_png()), "deadline_s": 0}, 400, "deadline_s")]
    for body_, status, fragment in cases:
        response = client.post("/api/v1/jobs", json=body_)
        assert response.status_code == status and fragment in response.get_json()["error"]["message"], body_
    batch = client.post("/api/v1/batches", json={"images": [data_uri(small_png()), "photo.jpg"], **SMALL})
    assert batch.status_code == 400 and batch.get_json()["error"]["message"].startswith("images[1]")


def test_a_json_batch_and_idempotency_keys(redis_server):
    """Two data URIs as one batch (parked: no worker needed), and a retry with the same key and the same
    object, its members in another order, answers the same batch; another object with it is 422."""
    client = make_app(routes=routes_to("json-parked")).test_client()
    images = [data_uri(small_png("astronaut")), data_uri(small_png("coffee"))]
    key = {"Idempotency-Key": f"json-{os.urandom(4).hex()}"}
    first = client.post("/api/v1/batches", json={"images": images, **SMALL}, headers=key)
    assert first.status_code == 202, first.get_json()
    batch = first.get_json()
    assert batch["total"] == 2 and [j["input_name"] for j in batch["jobs"]] == ["images-0.png", "images-1.png"]
    again = client.post("/api/v1/batches", json={"size": 64, "style": "sketch", "images": images}, headers=key)
    assert again.status_code == 202 and again.get_json()["id"] == batch["id"]
    other = client.post("/api/v1/batches", json={"images": images, "style": "cartoon", "size": 64}, headers=key)
    assert other.status_code == 422 and other.get_json()["error"]["code"] == "idempotency_key_reused"


def test_the_openapi_document_describes_both_bodies(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    for path, field, kind in (("/api/v1/jobs", "image", "string"), ("/api/v1/batches", "images", "array")):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/json"}
        schema = content["application/json"]["schema"]
        assert schema["required"] == [field] and schema["properties"][field]["type"] == kind
        assert {"style", "webhook_url", "deadline_s", "params"} <= set(schema["properties"])


# --- URLs fetched on the io queue ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def images(cert) -> Iterator[ImageServer]:
    server = ImageServer(tls=cert, routes={
        "/photo.png": body(small_png("coffee")),
        "/moved": redirect("/photo.png", 301),
        "/huge": endless(),  # 50 MB, no Content-Length: cut off at PIXELMILL_MAX_UPLOAD_BYTES
        "/bomb.png": body(png_bomb()),
        "/page.html": body(b"<!doctype html><html><p>not an image</p></html>", content_type="text/html"),
    })
    yield server
    server.close()


@pytest.fixture(scope="module")
def private_io(workers, cert) -> Iterator[str]:
    """An io worker allowed to fetch from this machine, trusting only this module's certificate;
    the session's io worker leaves the io queue to it meanwhile."""
    from stack.supervisor import plan_worker
    from tasks.celery_app import app

    plan = plan_worker("io")
    name = "iopriv"
    proc = start_worker(queues="io", concurrency=plan.concurrency, pool=plan.pool, name=name,
                        extra_env={**plan.env, "PIXELMILL_INPUT_ALLOW_PRIVATE": "1", "SSL_CERT_FILE": str(cert[0])})
    session_io = [f"io-{os.getpid()}@{socket.gethostname()}"]
    try:
        wait_worker_ready(proc, name=name, timeout_s=60)
        app.control.cancel_consumer("io", destination=session_io, reply=True, timeout=5)
        yield f"{name}-{os.getpid()}@{socket.gethostname()}"
    finally:
        app.control.add_consumer("io", destination=session_io, reply=True, timeout=5)
        stop_worker(proc)


@pytest.fixture(scope="module")
def url_client(redis_server):
    return make_app(input_allow_private=True).test_client()


def test_url_jobs_are_fetched_on_the_io_queue(url_client, images, private_io):
    """An https URL (through a redirect) succeeds; a 50 MB body, a PNG bomb and an HTML page fail their
    jobs with input_too_large / input_not_image while reading; the worker stays up and serves the next."""
    client = url_client
    submitted = {}
    for path in ("/moved", "/huge", "/bomb.png", "/page.html"):
        response = client.post("/api/v1/jobs", json={"image": images.url(path), **SMALL})
        assert response.status_code == 202, response.get_json()
        created = response.get_json()
        assert created["status"] == "queued" and created["source"] == {"kind": "url", "url": images.url(path)}
        submitted[path] = created["id"]
    jobs = {path: wait_for_job(fetcher(client), job_id, timeout_s=60) for path, job_id in submitted.items()}

    assert jobs["/moved"]["status"] == "succeeded", jobs["/moved"]
    assert jobs["/moved"]["input_name"] == "moved"
    assert client.get(f"/api/v1/jobs/{submitted['/moved']}/input").data.startswith(b"\x89PNG")
    expected = {"/huge": ("input_too_large", "more than"), "/bomb.png": ("input_too_large", "decompression_bomb"),
                "/page.html": ("input_not_image", "HTML")}
    for path, (code, fragment) in expected.items():
        job = jobs[path]
        assert job["status"] == "failed" and job["error"]["code"] == code, job
        assert fragment in job["error"]["message"], job["error"]
    assert images.sent["/huge"] < 50 * 1024 * 1024  # it stopped reading, the server could not send it all
    no_input = client.get(f"/api/v1/jobs/{submitted['/huge']}/input")
    assert no_input.status_code == 409 and no_input.get_json()["error"]["code"] == "not_ready"

    from tasks.celery_app import app

    assert app.control.ping(destination=[private_io], timeout=2), "the io worker did not survive"
    again = client.post("/api/v1/jobs", json={"image": images.url("/photo.png"), **SMALL}).get_json()
    assert wait_for_job(fetcher(client), again["id"], timeout_s=60)["status"] == "succeeded"


def test_a_redirect_to_a_forbidden_address_fails_the_job(redis_server, images, cert):
    """The fetch task itself (tasks.inputs.run_fetch, here in-process) with private addresses refused:
    the origin (on loopback) is let through by the test, its redirect to the metadata address is not."""
    import ssl

    from safety.fetch import check_input_url, fetch
    from tasks.inputs import run_fetch
    from tasks.services import Services

    images.routes["/metadata"] = redirect("https://169.254.169.254/latest/meta-data/")
    parked = make_app(input_allow_private=True, routes=routes_to("json-fetch-parked")).test_client()
    job_id = parked.post("/api/v1/jobs", json={"image": images.url("/metadata"), **SMALL}).get_json()["id"]

    origin = images.url("/")
    strict = Services(Settings(input_allow_private=False, routes=routes_to("json-fetch-parked")))
    def check(hop: str):
        return check_input_url(hop, allow_private=hop.startswith(origin))

    run_fetch(strict, job_id, fetcher=partial(fetch, check=check,
                                              ssl_context=ssl.create_default_context(cafile=str(cert[0]))))
    job = fetcher(parked)(job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "input_unreachable", job
    assert "169.254.169.254" in job["error"]["message"] and "link-local" in job["error"]["message"]
