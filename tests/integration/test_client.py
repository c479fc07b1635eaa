"""The Python client (client/), the example webhook receiver and `pixelmill webhooks listen`, against
the app served over HTTP in a thread and real Celery workers (64-px images, the style engine)."""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from client import ApiError, Batch, Client, Job
from tasks.settings import Settings
from tests.conftest import ROOT, encode, photo, routes_to

pytestmark = pytest.mark.integration

SMALL = {"style": "sketch", "size": 64}


@contextmanager
def serve(app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def base(workers) -> Iterator[str]:
    from web import create_app

    with serve(create_app()) as url:
        yield url


def png(name: str = "astronaut") -> bytes:
    return encode(photo(name, size=64))


def eventually(check: Callable[[], object], *, timeout_s: float = 30, what: str = "it") -> object:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def test_every_client_method_against_real_workers(base, tmp_path):
    path = tmp_path / "coffee.png"
    path.write_bytes(png("coffee"))
    uri = "data:image/png;base64," + base64.b64encode(png("chelsea")).decode()
    with Client(base) as pm:
        from_bytes = pm.submit(png(), **SMALL)
        events = list(pm.events(from_bytes))  # follows it while it runs, until `end`
        from_path = pm.submit(path, **SMALL)
        from_uri = pm.submit(uri, **SMALL)
        batch = pm.batch([png("rocket"), path], **SMALL)
        mixed = pm.batch([png("camera"), uri], **SMALL)  # a data URI in it: sent as JSON

        assert isinstance(from_bytes, Job) and from_bytes.status == "queued"
        assert [from_path.input_name, from_uri.input_name] == ["coffee.png", "image.png"]
        assert (from_path.source, from_uri.source) == ({"kind": "upload"}, {"kind": "data_uri",
                                                                            "media_type": "image/png"})
        statuses = [e.job.status for e in events if e.type == "job"]
        assert statuses[-1] == "succeeded" and len(statuses) > 1 and events[-1].type == "end"
        for job in (from_bytes, from_path, from_uri):
            done = pm.wait(job, timeout_s=60)
            assert done.succeeded and done.links.result and done.finished_at
        for each in (batch, mixed):
            done = pm.wait(each, timeout_s=60)
            assert isinstance(done, Batch) and done.counts == {"succeeded": 2} and len(done.jobs) == 2
        saved = pm.download(from_path, tmp_path / "out" / "coffee-sketch.png")
        assert saved.read_bytes().startswith(b"\x89PNG") and not list((tmp_path / "out").glob(".*part"))

        with pytest.raises(ApiError) as err:
            pm.submit(b"%PDF-1.4 not an image", **SMALL)
        assert (err.value.status, err.value.code) == (422, "unsupported_format") and "PDF" in err.value.message
        with pytest.raises(ApiError) as err:
            pm.cancel(from_bytes)
        assert err.value.code == "already_finished"


def test_cancel_and_not_ready_against_a_server_whose_jobs_wait(redis_server, tmp_path):
    from web import create_app

    with serve(create_app(Settings(routes=routes_to("client-parked")))) as url, Client(url) as pm:
        job = pm.submit(png(), **SMALL)
        with pytest.raises(ApiError) as err:
            pm.download(job, tmp_path / "x.png")
        assert (err.value.status, err.value.code) == (409, "not_ready")
        canceled = pm.cancel(job)
        assert canceled.status == "canceled" and canceled.error.code == "canceled"
        assert pm.wait(job, timeout_s=5).status == "canceled"
        with pytest.raises(ApiError) as err:
            pm.fetch("0" * 32)
        assert (err.value.status, err.value.code) == (404, "not_found")


# --- webhooks: the example receiver, and `pixelmill webhooks listen` ------------------------------------

def receiver_app(secret: str = ""):
    spec = importlib.util.spec_from_file_location("webhook_receiver", ROOT / "examples" / "webhook_receiver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_app(secret)


def test_the_example_receiver_verifies_and_dedupes_real_deliveries(base):
    receiver = receiver_app()
    with serve(receiver) as hook_base, Client(base) as pm:
        job = pm.submit(png("coins"), webhook_url=f"{hook_base}/hook", webhook_events=["job.completed"], **SMALL)
        receiver.config["WEBHOOK_SECRET"] = job.data["webhook"]["secret"]  # shown once, in the 202
        assert pm.wait(job, timeout_s=60).succeeded
        handled = eventually(lambda: receiver.config["HANDLED"], what="a verified delivery")
        assert [(e["type"], e["data"]["id"]) for e in handled] == [("job.completed", job.id)]

        delivery = pm.fetch(job).data["deliveries"][0]
        requests.post(f"{base}/api/v1/deliveries/{delivery['id']}/redeliver", timeout=10).raise_for_status()
        eventually(lambda: receiver.config["DUPLICATES"], what="the redelivery")
        assert receiver.config["DUPLICATES"] == [delivery["webhook_id"]] and len(receiver.config["HANDLED"]) == 1

        forged = requests.post(f"{hook_base}/hook", data=b'{"type":"job.completed"}', timeout=10,
                               headers={"webhook-id": "msg_x", "webhook-timestamp": str(int(time.time())),
                                        "webhook-signature": "v1,AAAA"})
        assert forged.status_code == 400 and len(receiver.config["HANDLED"]) == 1


def test_webhooks_listen_forwards_signed_events_to_a_local_receiver(base):
    receiver = receiver_app()
    with serve(receiver) as hook_base:
        proc = subprocess.Popen([sys.executable, "-m", "stack.cli", "webhooks", "listen", "--url", base,
                                 "--forward-to", f"{hook_base}/hook"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
        try:
            secret = eventually(lambda: next((m.group(0) for line in lines
                                              if (m := re.search(r"whsec_[A-Za-z0-9+/=]+", line))), None),
                                what="the listen session's secret")
            receiver.config["WEBHOOK_SECRET"] = secret
            with Client(base) as pm:
                job = pm.submit(png("rocket"), **SMALL)
                assert pm.wait(job, timeout_s=60).succeeded
            eventually(lambda: any(e["type"] == "job.completed" and e["data"]["id"] == job.id
                                   for e in receiver.config["HANDLED"]), what="job.completed, verified")
            types = [e["type"] for e in receiver.config["HANDLED"] if e["data"].get("id") == job.id]
            assert types == ["job.started", "job.completed"]
            eventually(lambda: any("job.completed" in line and "[204]" in line for line in lines),
                       what="the forward reported")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        assert proc.returncode == 0, "".join(lines)
