"""The whole stack as `make run` starts it — `pixelmill up` with its own Redis on a free port,
every process separate — for the end-to-end and browser tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.conftest import ROOT
from stack.redis_server import free_port


@dataclass(frozen=True)
class Stack:
    base: str                 # http://127.0.0.1:<port>
    proc: subprocess.Popen    # `pixelmill up`
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_stack(data_dir: Path, *, env: dict[str, str] | None = None, timeout_s: float = 90) -> Iterator[Stack]:
    """Start `pixelmill up` in ``data_dir`` and wait until it answers /healthz; Ctrl-C (SIGINT) it
    on the way out unless a test stopped it already. Nothing PIXELMILL_ leaks in from the test
    session (so it starts its own Redis) except what ``env`` sets."""
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELMILL_")}
    child_env.update(env or {})
    log_path = data_dir / "stack.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", "up", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    stack = Stack(f"http://127.0.0.1:{port}", proc, data_dir, log_path)
    try:
        wait_healthy(stack, timeout_s=timeout_s)
        yield stack
    finally:
        stop(stack)  # never leave a stack behind, half-started or not


def wait_healthy(stack: Stack, *, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert stack.proc.poll() is None, stack.log()
        try:
            if requests.get(f"{stack.base}/healthz", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, stack.log()
        time.sleep(0.5)


def stop(stack: Stack, *, timeout_s: float = 60) -> None:
    if stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGINT)
        try:
            stack.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            stack.proc.wait()


class SharedStack:
    """One stack for the session's end-to-end tests, started on first use. A test may stop it
    (the Ctrl-C test does); the next one to ask gets a fresh stack."""

    def __init__(self, make_dir) -> None:
        self._make_dir = make_dir
        self._current: Stack | None = None
        self._context = None

    def get(self) -> Stack:
        if self._current is None or self._current.proc.poll() is not None:
            self.close()
            self._context = running_stack(self._make_dir())
            self._current = self._context.__enter__()
        return self._current

    def close(self) -> None:
        if self._context is not None:
            context, self._context, self._current = self._context, None, None
            context.__exit__(None, None, None)
