"""What the benchmarks share: the machine's name, a private Redis, worker subprocesses, waiting
for jobs as a live client does, medians and percentiles, and writing one marked section of
docs/benchmarks.md; inputs that no cache can take for one another."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workers.autotune import percentile  # noqa: E402,F401 — the one definition, autotune's p95 too


def machine() -> str:
    """"2-core Intel(R) Xeon(R) …, no GPU, torch 2.13.0+cpu" — named in every table."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {cpu}, {gpu}, torch {torch.__version__}"


class JobWaiter:
    """Waits for jobs to end as a client of the live API does: woken by the tenant's events (what
    ``GET /api/v1/events`` streams: a job's start and its end, each with the job's record), the
    record of a job's end taken from its event. No polling loop, and no read of the store while
    the job runs, competes with the workers for the machine's cores."""

    def __init__(self, rt, tenant: str) -> None:
        from tasks.live import channel_for

        self._rt = rt
        self._live = rt.redis.pubsub(ignore_subscribe_messages=True)
        self._live.subscribe(channel_for("tenant", tenant))

    def wait(self, ids: list[str]) -> list:
        """The jobs ``ids`` once every one of them has ended."""
        from tasks.events import JobEvent
        from tasks.jobs import Job

        ended: dict = {}
        look = time.monotonic() + 1.0
        while len(ended) < len(ids):
            message = self._live.get_message(timeout=max(0.0, look - time.monotonic()))
            if time.monotonic() >= look:  # every second, read the records: an event may have gone by unseen
                for job in (self._rt.store.fetch(job_id) for job_id in ids if job_id not in ended):
                    if job.status.is_terminal():
                        ended[job.id] = job
                look = time.monotonic() + 1.0
            if message is None:
                continue
            event = JobEvent.from_json(message["data"])
            if event.job_id in ids and event.snapshot is not None:
                job = Job.from_dict(event.snapshot)
                if job.status.is_terminal():
                    ended[job.id] = job
        return [ended[job_id] for job_id in ids]


def distinct_photos(count: int, size: int) -> list:
    """``count`` distinct RGB photos: scikit-image's and scikit-learn's sample photos, each turned
    and mirrored eight ways, then cropped a little tighter each time round — different enough that
    the latent cache's near-duplicate match never takes one for another."""
    import numpy as np
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), *load_sample_images().images]
    out = []
    for i in range(count):
        step, turn = divmod(i // len(sources), 8)
        src = np.rot90(sources[i % len(sources)], k=turn % 4)
        src = src[:, ::-1] if turn >= 4 else src
        h, w = src.shape[:2]
        side = min(h, w) - 40 * step
        top, left = (h - side) // 2 + 7 * step, (w - side) // 2 - 9 * step
        crop = src[max(top, 0):max(top, 0) + side, max(left, 0):max(left, 0) + side, :3]
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size))))
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


def start_worker(app: str, *, queues: str, pool: str, concurrency: int, name: str,
                 env: dict[str, str] | None = None, log_dir: Path) -> subprocess.Popen:
    log = open(log_dir / f"worker-{name}.log", "wb")
    argv = [sys.executable, "-m", "celery", "-A", app, "worker", "--queues", queues, "--pool", pool,
            "--concurrency", str(concurrency), "--hostname", f"{name}@%h", "--loglevel", os.environ.get("BENCH_LOGLEVEL", "WARNING"),
            "--without-gossip", "--without-mingle"]
    return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(app, proc: subprocess.Popen, *, name: str, timeout_s: float = 180) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited with {proc.returncode}")
        if app.control.ping(timeout=0.5, destination=[f"{name}@{socket.gethostname()}"]):
            return
    raise RuntimeError(f"worker {name} not ready after {timeout_s} s")


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_section(name: str, block: str, *, path: Path = DOCS) -> None:
    """Replace the text between <!-- name:start --> and <!-- name:end --> (or append it)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = f"{start}\n{block.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)


def table(header: tuple[str, ...], rows: list[tuple[str, ...]], *, align: str = "") -> str:
    """A Markdown table; ``align`` has one letter per column, ``r`` for right-aligned (numbers)."""
    rule = "".join("---:|" if a == "r" else "---|" for a in align.ljust(len(header), "l"))
    lines = ["| " + " | ".join(header) + " |", "|" + rule]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
