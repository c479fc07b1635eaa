"""`pixelmill watch` as a subprocess against the app served over HTTP with the session's real
workers: files dropped in the folder come back as results once they settle (a file still being
written is not sent half-written), and a restarted watcher submits nothing twice."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SESSION_DIR, encode
from tests.integration.test_cli import _image, _server_jobs, server  # noqa: F401 — the served app

pytestmark = pytest.mark.integration

FAST = ["--size", "64", "--style", "sketch", "--settle-s", "0.6", "--interval-s", "0.2"]


def _watcher(folder: Path, url: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stack.cli", "watch", str(folder), "--url", url, *FAST],
                            cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def _wait_for(paths: list[Path], proc: subprocess.Popen, log: Path, *, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in paths):
        if proc.poll() is not None or time.monotonic() > deadline:
            missing = [str(p) for p in paths if not p.exists()]
            raise AssertionError(f"no result for {missing} (watcher exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def test_watch_submits_settled_files_once_across_restarts(server, tmp_path):  # noqa: F811
    tag = f"watch-{secrets.token_hex(3)}"
    folder, log = tmp_path / "hot", SESSION_DIR / f"watch-{tag}.log"
    drop = folder / tag  # a subfolder named after the test: its jobs' input names start with it
    drop.mkdir(parents=True)
    out = folder / "results"  # the default --out: inside the watched folder, never taken for an input
    watcher = _watcher(folder, server, log)
    try:
        (drop / "a.jpg").write_bytes(encode(_image(0), "JPEG"))
        (drop / "b.png").write_bytes(encode(_image(1), "PNG"))
        slow = encode(_image(2), "JPEG")  # written in pieces, more slowly than it takes to settle
        with (drop / "c.jpg").open("wb") as f:
            for i in range(0, len(slow), len(slow) // 4 + 1):
                f.write(slow[i:i + len(slow) // 4 + 1])
                f.flush()
                time.sleep(0.25)
        _wait_for([out / tag / "a.png", out / tag / "b.png", out / tag / "c.png"], watcher, log)
    finally:
        assert _stop(watcher) == 130, log.read_text()[-3000:]

    restarted = _watcher(folder, server, log)
    try:
        (drop / "d.webp").write_bytes(encode(_image(3), "WEBP"))
        _wait_for([out / tag / "d.png"], restarted, log)
    finally:
        _stop(restarted)

    names = sorted(job["input_name"] for job in _server_jobs(server, f"{tag}/"))
    assert names == [f"{tag}/a.jpg", f"{tag}/b.png", f"{tag}/c.jpg", f"{tag}/d.webp"], log.read_text()[-3000:]
    assert not list(out.rglob("results"))  # results were not watched as inputs
    assert "refused" not in log.read_text()  # the half-written c.jpg was never sent
