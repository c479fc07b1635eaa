"""The stack as `make run` starts it (`pixelmill up`, its own Redis, every default) heals itself:
its Redis is restarted when it dies, a stop in the middle of a batch strands no job, and a second
stack on the same data folder is refused. Jobs are counted at the end: none lost, none twice."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, encode, photo
from tests.e2e.stack_process import Stack, running_stack, stop, wait_healthy

pytestmark = pytest.mark.faults

TERMINAL = {"succeeded", "failed", "blocked", "canceled"}


def submit_batch(stack: Stack, count: int) -> list[str]:
    image = encode(photo("chelsea", size=64))
    files = [("images", (f"cat-{i}.png", io.BytesIO(image), "image/png")) for i in range(count)]
    response = requests.post(f"{stack.base}/api/v1/batches", files=files,
                             data={"params": '{"engine": "style", "style": "sketch", "size": 64}'}, timeout=60)
    assert response.status_code == 202, response.text
    return [job["id"] for job in response.json()["jobs"]]


def wait_all(stack: Stack, ids: list[str], *, timeout_s: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    jobs: dict[str, dict] = {}
    while time.monotonic() < deadline:
        try:
            jobs = {i: requests.get(f"{stack.base}/api/v1/jobs/{i}", timeout=10).json() for i in ids}
        except requests.RequestException:
            jobs = {}
        if len(jobs) == len(ids) and all(j.get("status") in TERMINAL for j in jobs.values()):
            return jobs
        time.sleep(0.5)
    late = {i: (j.get("status"), j.get("stage")) for i, j in jobs.items() if j.get("status") not in TERMINAL}
    raise AssertionError(f"{len(late)} of {len(ids)} jobs unfinished after {timeout_s} s: {late}\n{stack.log()[-3000:]}")


def redis_pid(stack: Stack) -> int:
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        pid, ppid, args = line.split(None, 2)
        if int(ppid) == stack.proc.pid and "redis-server" in args:
            return int(pid)
    raise AssertionError(f"no redis-server under pixelmill up (pid {stack.proc.pid})")


def seconds_until_healthy(stack: Stack, *, timeout_s: float) -> float:
    started = time.monotonic()
    wait_healthy(stack, timeout_s=timeout_s)
    return time.monotonic() - started


def test_redis_stopped_twice_mid_batch(tmp_path):
    with running_stack(tmp_path) as stack:
        ids = submit_batch(stack, 50)
        time.sleep(1)
        recovered = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pid = redis_pid(stack)
            os.kill(pid, sig)
            stopped_at = time.monotonic()
            while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
                time.sleep(0.05)
            time.sleep(0.5)  # so that the stack is seen down, not before the stop
            wait_healthy(stack, timeout_s=15)
            recovered.append(time.monotonic() - stopped_at)
            assert redis_pid(stack) != pid  # restarted, and the old one reaped (not <defunct>)
        jobs = wait_all(stack, ids, timeout_s=90)
        print(f"\n[Redis SIGTERM then SIGKILL, defaults] answered again after "
              f"{', '.join(f'{s:.1f} s' for s in recovered)}; {len(jobs)} jobs: "
              f"{sorted({j['status'] for j in jobs.values()})}")
        assert all(s < 15 for s in recovered)
        assert {j["status"] for j in jobs.values()} == {"succeeded"}
        assert stack.log().count("; restarted it at ") == 2, stack.log()[-2000:]  # both stops
        health = requests.get(f"{stack.base}/healthz", timeout=10).json()
        # the count lives in that Redis: its append-only file (everysec) may lose the first one to the SIGKILL
        assert health["restarts"]["redis"]["count"] >= 1
        listed = requests.get(f"{stack.base}/api/v1/jobs", params={"limit": 200}, timeout=10).json()["jobs"]
        assert len(listed) == 50  # none lost, none made twice


def test_stop_and_start_again_mid_batch(tmp_path):
    with running_stack(tmp_path) as stack:
        ids = submit_batch(stack, 30)
        time.sleep(2)
        stop(stack)  # Ctrl-C
        assert stack.proc.returncode == 0, stack.log()
    with running_stack(tmp_path) as again:
        started = time.monotonic()
        jobs = wait_all(again, ids, timeout_s=60)
        print(f"\n[Ctrl-C mid-batch, up again, defaults] all {len(jobs)} finished "
              f"{time.monotonic() - started:.1f} s after the restart answered")
        assert {j["status"] for j in jobs.values()} == {"succeeded"}


def test_a_second_stack_on_the_same_folder_is_refused(tmp_path):
    with running_stack(tmp_path) as stack:
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "stack.cli", "up", "--data-dir", str(tmp_path)],
                                cwd=ROOT, capture_output=True, text=True, timeout=30,
                                env={k: v for k, v in os.environ.items() if not k.startswith("PIXELMILL_")})
        took = time.monotonic() - started
        assert second.returncode != 0 and took < 5, (second.returncode, took)
        assert f"pid {stack.proc.pid}" in second.stderr and stack.base.split(":")[-1] in second.stderr, second.stderr
        redis = subprocess.run([sys.executable, "-m", "stack.cli", "redis", "--data-dir", str(tmp_path / "redis")],
                               cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert redis.returncode != 0 and "in use by" in redis.stderr, redis.stderr
        assert requests.get(f"{stack.base}/healthz", timeout=10).ok  # the first one is untouched
