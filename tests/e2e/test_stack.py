"""End to end: start the stack the way `make run` does (its own Redis, three workers, the web
server, all separate processes), upload through the HTML form over HTTP, download the result,
then stop it with Ctrl-C and check every process is gone."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import ROOT, encode, photo, wait_for_job
from workers.redis_server import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("stack")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELMILL_")}  # nothing preset: own Redis
    log = (data_dir / "stack.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "up", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc, log_path=data_dir / "stack.log")
    except BaseException:
        proc.send_signal(signal.SIGINT)  # never leave a half-started stack behind
        proc.wait(timeout=60)
        raise
    yield base, proc, data_dir
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def _wait_healthy(base: str, proc: subprocess.Popen, *, log_path: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            if requests.get(f"{base}/healthz", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.5)


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout
    pairs = [tuple(map(int, line.split())) for line in out.splitlines()[1:]]
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in pairs if ppid == parent]
        found += kids
        frontier += kids
    return found


def test_upload_in_the_form_and_download_the_result(stack):
    base, proc, data_dir = stack
    browser = requests.Session()  # keeps the session cookie, as a browser would
    page = browser.get(base, timeout=10)
    assert page.ok and 'name="images"' in page.text and "Cartoon" in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)

    original = photo("astronaut", size=320)
    response = browser.post(
        f"{base}/submit",
        files={"images": ("astronaut.jpg", encode(original, "JPEG", quality=90), "image/jpeg")},
        data={"_form": "1", "csrf_token": csrf, "engine": "style", "style": "cartoon", "upscale": "2", "size": "320"},
        timeout=30,
    )
    assert response.ok and "/jobs/" in response.url, response.text
    job_id = re.search(r"/jobs/([0-9a-f]{32})", response.url).group(1)
    assert "Job" in response.text  # the job page rendered

    job = wait_for_job(lambda i: requests.get(f"{base}/api/v1/jobs/{i}", timeout=10).json(), job_id, timeout_s=120)
    assert job["status"] == "succeeded", job
    result = requests.get(job["links"]["result"], params={"download": "1"}, timeout=10)
    assert result.ok and result.headers["Content-Type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(result.content)).convert("RGB"))
    assert image.shape == (640, 640, 3)  # restyled at 320 and upscaled ×2
    shrunk = np.asarray(Image.fromarray(image).resize((320, 320)), dtype=float)
    assert np.abs(shrunk - original).mean() > 8

    assert (data_dir / "redis" / "appendonlydir").exists()  # the stack's own Redis, data under its folder
    gallery = requests.get(f"{base}/gallery", timeout=10)
    assert job_id in gallery.text


def test_ctrl_c_stops_every_process(stack):
    _base, proc, _ = stack
    children = _children_of(proc.pid)
    assert len(children) >= 5  # redis, 3 workers, web (plus their pool processes)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    time.sleep(0.5)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
    assert alive == []
