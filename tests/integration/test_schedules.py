"""A schedule fired by `pixelmill beat` (a real Celery beat process) runs on the session's io worker:
the folder's images go in as one batch with its own webhook, the results land in the output folder,
and firings while that run is going (or after it, with nothing new) submit nothing again."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, SESSION_DIR, encode, photo
from tests.integration.test_webhooks import eventually, receivers  # noqa: F401 — the receiver fixture

pytestmark = pytest.mark.integration


def test_a_scheduled_batch_fires_and_writes_its_results(workers, redis_client, receivers, tmp_path):  # noqa: F811
    from tasks.services import get_services

    tag = f"sched-{secrets.token_hex(3)}"
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    names = [f"{tag}-a.jpg", f"{tag}-b.png"]
    (folder / names[0]).write_bytes(encode(photo("astronaut", size=64), "JPEG"))
    (folder / names[1]).write_bytes(encode(photo("coffee", size=64), "PNG"))
    (folder / ".hidden.png").write_bytes(b"not taken")
    receiver = receivers()
    schedule = {"name": tag, "every_s": 2, "folder": str(folder), "out": str(out),
                "params": {"engine": "style", "style": "sketch", "size": 64}, "webhook_url": receiver.url()}
    env = {**os.environ, "PIXELMILL_SCHEDULES": json.dumps([schedule]), "PIXELMILL_DATA_DIR": str(tmp_path / "beat")}
    log = SESSION_DIR / f"beat-{tag}.log"
    beat = subprocess.Popen([sys.executable, "-m", "stack.cli", "beat"], cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    results = [out / f"{tag}-a.png", out / f"{tag}-b.png"]
    try:
        deadline = time.monotonic() + 40
        while not all(p.exists() for p in results):
            assert beat.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no results in {out}:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        time.sleep(4.5)  # two more firings: nothing new in the folder, so no new batch
    finally:
        beat.send_signal(signal.SIGTERM)
        try:
            beat.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(beat.pid, signal.SIGKILL)
            beat.wait()
    assert (tmp_path / "beat" / "celerybeat-schedule").exists() or list((tmp_path / "beat").glob("celerybeat-*"))
    from PIL import Image

    for path in results:
        with Image.open(path) as image:
            assert image.format == "PNG" and max(image.size) == 64

    rt = get_services()
    jobs = [job for job in rt.store.recent(rt.settings.default_tenant, limit=200) if job.input_name.startswith(tag)]
    assert sorted(job.input_name for job in jobs) == sorted(names)  # one run, one batch: never twice
    (batch_id,) = {job.batch_id for job in jobs}
    completed = eventually(lambda: receiver.of(job_id=batch_id, type_="batch.completed"), timeout_s=20,
                           what="the run's batch.completed webhook")
    assert len(completed) == 1
    assert redis_client.get(f"pixelmill:schedule:{tag}:running") is None  # the run is over
    subscription = rt.webhooks.fetch_subscription(batch_id)
    endpoint = rt.webhooks.fetch_endpoint(subscription.endpoint_id)
    rt.webhooks.delete_endpoint(endpoint)  # later jobs of the tenant must not call this test's receiver
