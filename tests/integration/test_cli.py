"""``pixelmill submit`` against a real server (the app served over HTTP in a thread) and real
Celery workers: folders and zips mirrored under --out, resume after a stop or a Ctrl-C without
submitting anything twice, refused files reported with the server's message, exit codes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from werkzeug.serving import make_server

from tests.conftest import ROOT, declare_test_queue, encode, photo
from stack.cli import main
from stack.redis_server import free_port
from client.state import STATE_NAME

pytestmark = pytest.mark.integration

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")
FAST = ["--size", "96", "--style", "sketch"]  # small images keep the real pipeline quick


def _serve(app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(workers) -> Iterator[str]:
    from web import create_app

    yield from _serve(create_app())


def _image(i: int) -> np.ndarray:
    """A distinct small real photo for each i (flips and rotations of the sample photos)."""
    image = photo(PHOTOS[i % len(PHOTOS)], size=96)
    return np.ascontiguousarray(np.rot90(image, k=i // len(PHOTOS)))


def _write(path: Path, i: int, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(_image(i), fmt))
    return path


def _submit(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["submit", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _state(out: Path) -> dict:
    return json.loads((out / STATE_NAME).read_text())["entries"]


def _server_jobs(base: str, prefix: str) -> list[dict]:
    """Jobs the server holds whose input came from this test's uniquely named folder."""
    jobs = requests.get(f"{base}/api/v1/jobs", params={"limit": 200}, timeout=10).json()["jobs"]
    return [job for job in jobs if job["input_name"].startswith(prefix)]


def _is_png(path: Path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and min(image.size) > 0


def test_folders_and_zips_are_mirrored_under_out(server, tmp_path, capsys):
    tag = f"mirror-{secrets.token_hex(3)}"
    photos = tmp_path / "photos"
    _write(photos / tag / "a.jpg", 0)
    _write(photos / tag / "a.png", 1, "PNG")  # the same name as a.jpg once it is a .png result
    _write(photos / tag / "nested" / "deeper" / "b.webp", 2, "WEBP")
    (photos / tag / "notes.txt").write_text("not an image: skipped")
    _write(photos / tag / ".hidden.jpg", 3)  # hidden: skipped
    archive = tmp_path / "pics.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("x/c.jpg", encode(_image(4), "JPEG"))
        z.writestr("../evil.png", encode(_image(5), "PNG"))  # may not leave out/pics/
        z.writestr("__MACOSX/x/._c.jpg", b"resource fork")
    out = tmp_path / "out"

    code, stdout, stderr = _submit(capsys, photos, archive, "--url", server, "--wait", "--out", out,
                                   "--batch-size", "2", *FAST)

    assert code == 0, stdout + stderr
    expected = {f"{tag}/a.png", f"{tag}/a.png.png", f"{tag}/nested/deeper/b.png", "pics/x/c.png", "pics/evil.png"}
    found = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert found == expected
    assert all(_is_png(out / name) for name in expected)
    entries = _state(out)
    assert len(entries) == 5 and all(e["downloaded"] and e["status"] == "succeeded" for e in entries.values())
    assert len({e["batch_id"] for e in entries.values()}) == 3  # 5 images in chunks of 2
    assert "5 of 5 succeeded" in stdout
    assert "5/5" in stderr and "ok=5" in stderr and "failed=0" in stderr  # the tqdm bar and its postfix


def test_a_rerun_submits_only_what_was_never_submitted(server, tmp_path, capsys):
    tag = f"resume-{secrets.token_hex(3)}"
    root = tmp_path / "in"
    for i in range(3):
        _write(root / tag / f"p{i}.jpg", i)
    out = tmp_path / "out"

    code, stdout, _ = _submit(capsys, root, "--url", server, "--out", out, *FAST)  # no --wait: submit only
    assert code == 0, stdout
    first = {key: e["job_id"] for key, e in _state(out).items()}
    assert len(first) == 3 and all(first.values())
    assert not list(out.rglob("*.png"))

    for i in (3, 4):  # new inputs appear before the rerun
        _write(root / tag / f"p{i}.jpg", i)
    code, stdout, stderr = _submit(capsys, root, "--url", server, "--wait", "--out", out, "--no-progress", *FAST)
    assert code == 0, stdout + stderr
    second = {key: e["job_id"] for key, e in _state(out).items()}
    assert {k: second[k] for k in first} == first  # the first three were polled, not resubmitted
    assert len(second) == 5 and len(_server_jobs(server, f"{tag}/")) == 5
    assert "2 to submit" in stdout

    for name in ("p0.png", "p3.png"):  # results lost since: downloaded again, never resubmitted
        (out / tag / name).unlink()
    code, stdout, _ = _submit(capsys, root, "--url", server, "--wait", "--out", out, "--no-progress", *FAST)
    assert code == 0, stdout
    assert {key: e["job_id"] for key, e in _state(out).items()} == second
    assert len(_server_jobs(server, f"{tag}/")) == 5
    assert sorted(p.name for p in (out / tag).glob("*.png")) == [f"p{i}.png" for i in range(5)]
    assert "0 to submit" in stdout


HELD = declare_test_queue("cli-held")  # a queue the session's workers consume only when a test says so


@pytest.fixture(scope="module")
def held_server(workers) -> Iterator[str]:
    """A server whose style jobs wait for their first stage in a queue of their own until
    :func:`_release_held` lets a worker take them (the rest of each chain goes the usual way)."""
    from tasks.settings import Settings
    from web import create_app

    yield from _serve(create_app(Settings(routes={"encode:style": HELD})))


@contextmanager
def _release_held() -> Iterator[None]:
    from tasks.celery_app import app

    worker = [f"test-{os.getpid()}@{socket.gethostname()}"]  # the session's cpu worker (conftest)
    assert app.control.add_consumer(HELD, destination=worker, reply=True, timeout=10)
    try:
        yield
    finally:
        app.control.cancel_consumer(HELD, destination=worker, reply=True, timeout=10)


def test_ctrl_c_then_rerun_finishes_without_resubmitting(held_server, tmp_path, capsys):
    """Ctrl-C while waiting (every input submitted, its jobs held in their queue), then the same
    command again: it polls and fetches the jobs it has, and submits nothing."""
    tag = f"sigint-{secrets.token_hex(3)}"
    root = tmp_path / "in"
    count = 6
    for i in range(count):
        _write(root / tag / f"p{i}.jpg", i)
    out = tmp_path / "out"
    argv = ["submit", str(root), "--url", held_server, "--wait", "--out", str(out), "--batch-size", "2",
            "--no-progress", *FAST]
    proc = subprocess.Popen([sys.executable, "-m", "stack.cli", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:  # every input submitted: no upload in flight, the CLI is polling
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            entries = _state(out) if (out / STATE_NAME).exists() else {}
            if len(entries) == count and all(e["job_id"] for e in entries.values()):
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stdout + stderr
    assert "To resume, run the same command again" in stderr and f"pixelmill {' '.join(argv)}" in stderr
    interrupted = _state(out)
    assert not any(e["downloaded"] for e in interrupted.values())

    with _release_held():
        code, stdout, stderr = _submit(capsys, *argv[1:])
    assert code == 0, stdout + stderr
    assert "0 to submit" in stdout
    final = _state(out)
    assert {k: e["job_id"] for k, e in final.items()} == {k: e["job_id"] for k, e in interrupted.items()}
    assert all(e["downloaded"] for e in final.values())
    assert len(list((out / tag).glob("*.png"))) == count
    assert len(_server_jobs(held_server, f"{tag}/")) == count  # nothing was submitted twice


def test_refused_files_are_reported_and_the_rest_goes_on(server, tmp_path, capsys):
    tag = f"bad-{secrets.token_hex(3)}"
    root = tmp_path / "in"
    _write(root / tag / "good1.jpg", 0)
    (root / tag / "broken.png").write_bytes(b"this is not an image")
    _write(root / tag / "good2.png", 1, "PNG")
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"not a zip either")
    out = tmp_path / "out"

    code, stdout, stderr = _submit(capsys, root, bad_zip, "--url", server, "--wait", "--out", out,
                                   "--no-progress", *FAST)

    assert code == 1, stdout + stderr
    assert sorted(p.name for p in (out / tag).glob("*.png")) == ["good1.png", "good2.png"]
    summary = stdout[stdout.index("2 of 4 failed"):]
    broken_line = next(line for line in summary.splitlines() if "broken.png" in line)
    assert "refused" in broken_line and "PNG, JPEG or WebP" in broken_line  # the server's own message
    assert "nothing in this batch was queued" not in broken_line
    assert "bad.zip" in summary and "not a readable zip archive" in summary
    assert len(_server_jobs(server, f"{tag}/")) == 2


def test_usage_errors_exit_2_with_a_clear_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, stderr = _submit(capsys, tmp_path / "empty", "--out", tmp_path / "out")
    assert code == 2 and "no images found" in stderr

    _write(tmp_path / "one" / "a.jpg", 0)
    url = f"http://127.0.0.1:{free_port()}"
    code, _, stderr = _submit(capsys, tmp_path / "one", "--url", url, "--out", tmp_path / "out")
    assert code == 2 and f"cannot reach pixelmill at {url}" in stderr and "--url" in stderr


def test_api_key_is_sent_as_the_api_expects(redis_server, tmp_path, capsys):
    from tasks.settings import Settings
    from web import create_app

    app = create_app(Settings(auth_enabled=True))
    _, key = app.extensions["pixelmill"].tenants.create_key(tenant=f"cli-{secrets.token_hex(3)}")
    _write(tmp_path / "in" / "a.jpg", 0)
    for base in _serve(app):
        code, _, stderr = _submit(capsys, tmp_path / "in", "--url", base, "--out", tmp_path / "out")
        assert code == 2 and "needs an API key" in stderr and "PIXELMILL_API_KEY" in stderr

        code, stdout, stderr = _submit(capsys, tmp_path / "in", "--url", base, "--out", tmp_path / "out",
                                       "--api-key", key)
        assert code == 0, stdout + stderr
        job_id = next(iter(_state(tmp_path / "out").values()))["job_id"]
        response = requests.get(f"{base}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"},
                                timeout=10)
        assert response.ok and response.json()["input_name"] == "a.jpg"
