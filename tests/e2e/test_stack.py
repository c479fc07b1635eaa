"""End to end: start the stack the way `make run` does (its own Redis, three workers, the web
server, all separate processes), upload through the HTML form over HTTP, download the result,
then stop it with Ctrl-C and check every process is gone."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import encode, photo, wait_for_job

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(e2e_stack):
    return e2e_stack.base, e2e_stack.proc, e2e_stack.data_dir


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
