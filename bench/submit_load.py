"""Submit under load: 50 concurrent clients posting small PNGs to a stack as `make run` starts it
(`pixelmill up`: web, workers, reaper, its own Redis), while its workers run the jobs, side by side
with a plain Flask app that does the least a submit can do (decode and re-encode the upload, write
it, send one Celery message) under the same gunicorn settings.

    .venv/bin/python bench/submit_load.py [--clients 50] [--jobs 400] [--rounds 2] [--no-write]

Reports p50 and p99 of the submit request, submits/s, and the CPU milliseconds one submit costs in
the web processes (user + system time of the gunicorn processes over the round, per submit), and
waits for every pixelmill job to succeed. Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import machine, median, percentile, table, write_section  # noqa: E402
from stack.redis_server import RedisServer, free_port  # noqa: E402


@dataclass
class Round:
    side: str
    latencies: list[float]
    wall_s: float
    web_cpu_s: float
    errors: int

    @property
    def submits(self) -> int:
        return len(self.latencies)

    @property
    def cpu_ms_per_submit(self) -> float:
        return 1000 * self.web_cpu_s / max(self.submits, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=400, help="submits per round and side")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side, interleaved")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    photo = sample_png()
    tmp = Path(tempfile.mkdtemp(prefix="pixelmill-submit-load-"))
    with pixelmill_stack(tmp / "stack") as ours, plain_app(tmp / "plain") as plain:
        post(ours, photo, 4, 8)  # warm both: imports, connections, the first jobs
        post(plain, photo, 4, 8)
        rounds: list[Round] = []
        for _ in range(args.rounds):
            for side in (ours, plain):
                rounds.append(run_round(side, photo, clients=args.clients, jobs=args.jobs))
        wait_all_done(ours)
    report(args, rounds)


# --- the two sides ------------------------------------------------------------------------------

@dataclass
class Side:
    name: str
    url: str
    proc: subprocess.Popen
    root_pid: int

    def web_cpu_s(self) -> float:
        """User + system CPU seconds of this side's gunicorn processes (master and workers)."""
        total = 0.0
        for proc in [psutil.Process(self.root_pid), *psutil.Process(self.root_pid).children(recursive=True)]:
            try:
                if "gunicorn" in " ".join(proc.cmdline()):
                    times = proc.cpu_times()
                    total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total


class pixelmill_stack:
    """`pixelmill up` in its own data folder with its own Redis; the tenant's rate limit is raised so
    that the load is not refused (it would be, at 60 per minute, the default)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def __enter__(self) -> Side:
        self.data_dir.mkdir(parents=True)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELMILL_")}
        env.update(PIXELMILL_RATE_LIMIT_PER_MINUTE="1000000", PIXELMILL_MAX_ACTIVE_JOBS="100000")
        self.log = (self.data_dir / "stack.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "stack.cli", "up", "--port", str(port),
                                      "--data-dir", str(self.data_dir)], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        side = Side("pixelmill", f"http://127.0.0.1:{port}", self.proc, self.proc.pid)
        wait_healthy(side, "/healthz")
        return side

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


class plain_app:
    """bench/plain_submit.py under gunicorn with the web server's settings, on a private Redis."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def __enter__(self) -> Side:
        from stack.supervisor import web_argv

        self.data_dir.mkdir(parents=True)
        self.redis = RedisServer(data_dir=self.data_dir / "redis", appendonly=False).start()
        port = free_port()
        argv = web_argv(host="127.0.0.1", port=port)
        argv[-1] = "bench.plain_submit:app"  # the same gunicorn settings, the plain app
        env = {**os.environ, "PLAIN_REDIS_URL": self.redis.url, "PLAIN_DATA_DIR": str(self.data_dir / "blobs")}
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        side = Side("plain Flask + Celery send", f"http://127.0.0.1:{port}", self.proc, self.proc.pid)
        wait_healthy(side, "/healthz")
        return side

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.redis.stop()


def wait_healthy(side: Side, path: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert side.proc.poll() is None, f"{side.name} exited"
        try:
            if requests.get(side.url + path, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{side.name} did not answer {path}")


# --- the load -----------------------------------------------------------------------------------

def sample_png() -> bytes:
    """A 256×171 photo-like PNG (a gradient with noise), as in the issue's measurement."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:171, 0:256]
    image = np.stack([x, y * 1.5, (x + y) / 2], axis=-1) + rng.normal(0, 12, (171, 256, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def post(side: Side, photo: bytes, clients: int, jobs: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    remaining = iter(range(jobs))

    def client() -> None:
        nonlocal errors
        session = requests.Session()
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            start = time.perf_counter()
            response = session.post(f"{side.url}/api/v1/jobs", files={"image": ("photo.png", photo, "image/png")},
                                    data={"style": "sketch"}, timeout=60)
            elapsed = time.perf_counter() - start
            with lock:
                if response.status_code in (201, 202):
                    latencies.append(elapsed)
                else:
                    errors += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


def run_round(side: Side, photo: bytes, *, clients: int, jobs: int) -> Round:
    cpu_before, start = side.web_cpu_s(), time.perf_counter()
    latencies, errors = post(side, photo, clients, jobs)
    wall_s, cpu = time.perf_counter() - start, side.web_cpu_s() - cpu_before
    result = Round(side.name, latencies, wall_s, cpu, errors)
    print(f"{side.name:28s} p50 {1000 * percentile(latencies, 50):7.1f} ms  p99 {1000 * percentile(latencies, 99):7.1f} ms  "
          f"{len(latencies) / wall_s:6.1f} submits/s  web CPU {result.cpu_ms_per_submit:5.2f} ms per submit  "
          f"errors {errors}", flush=True)
    return result


def wait_all_done(side: Side, timeout_s: float = 900) -> None:
    """Every job the load submitted must succeed: the load may not lose or fail any."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = requests.get(f"{side.url}/api/v1/stats", timeout=10).json()["jobs"]
        if not sum(jobs["active"].values()):
            finished = jobs["finished_total"]
            bad = {k: v for k, v in finished.items() if k != "succeeded" and v}
            assert not bad, f"jobs did not succeed: {bad}"
            print(f"all {finished.get('succeeded', 0)} pixelmill jobs succeeded", flush=True)
            return
        time.sleep(2)
    raise TimeoutError("the stack's workers did not finish the jobs")


# --- the report ---------------------------------------------------------------------------------

def report(args: argparse.Namespace, rounds: list[Round]) -> None:
    by_side: dict[str, list[Round]] = {}
    for r in rounds:
        by_side.setdefault(r.side, []).append(r)
    rows, figures = [], {}
    for side, rs in by_side.items():
        latencies = [x for r in rs for x in r.latencies]
        figures[side] = (percentile(latencies, 50), percentile(latencies, 99),
                         median([r.submits / r.wall_s for r in rs]), median([r.cpu_ms_per_submit for r in rs]))
        p50, p99, rate, cpu = figures[side]
        rows.append((side, f"{1000 * p50:.0f} ms", f"{1000 * p99:.0f} ms", f"{rate:.0f}", f"{cpu:.2f} ms",
                     str(sum(r.errors for r in rs))))
    ours, plain = figures["pixelmill"], figures["plain Flask + Celery send"]
    rows.append(("**ratio pixelmill / plain**", f"{ours[0] / plain[0]:.2f}×", f"{ours[1] / plain[1]:.2f}×",
                 f"{ours[2] / plain[2]:.2f}×", f"{ours[3] / plain[3]:.2f}×", ""))
    text = table(("side", "p50", "p99", "submits/s (median round)", "web CPU per submit", "errors"), rows)
    print(text)
    if args.no_write:
        return
    write_section("submit-load", f"""## Submit under load (`bench/submit_load.py`)

Machine: {machine()}. Command: `.venv/bin/python bench/submit_load.py --clients {args.clients} --jobs {args.jobs} --rounds {args.rounds}`
({time.strftime('%Y-%m-%d')}). {args.clients} client threads post a 256×171 PNG each (multipart, `style=sketch`)
{args.jobs} times per round; the sides take turns, {args.rounds} rounds each. pixelmill is `pixelmill up` (gunicorn, 2
processes × 64 threads; its cpu, gpu and io workers and the reaper run the jobs meanwhile, on the same two
cores); every job succeeded. The plain side (`bench/plain_submit.py`) runs under the same gunicorn settings
and does the least a submit can: decode and re-encode the upload with Pillow, write it, send one Celery
message. "web CPU per submit" is the user + system time of the gunicorn processes over a round, per submit.

{text}

Before (491332a, 2026-12-02, the same command on this machine, the two benches' files copied in):
pixelmill p50 1128 ms, p99 3461 ms, 45 submits/s, **13.80 ms** web CPU per submit (plain side
11.27 ms in the same run). What changed: the upload's PNG is written by `safety/png.py` (ISA-L
deflate, "up" filter: about 5× Pillow's encode), and the tenant's limits and highest priority are
read in one round trip; a style job no longer reads the tenant's quality policy at submit (no
CLIPScore can judge it); since the hand-offs (`tasks/pipeline.py`) the first stage's message goes out in
the transaction that writes the job record, so a submit is three Redis round trips (the limits, the
upload blob's keep-until, the record with its message) and no Celery publish. py-spy (`--gil`) on the web processes, before the hand-offs, put most of
what was left in werkzeug's multipart parser (a regular expression compiled per request for its
boundary), Celery's publish, gunicorn's access log and the Redis round trips.""")


if __name__ == "__main__":
    main()
