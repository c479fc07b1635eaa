"""The reaper against a private Redis broker: a job that waited for its next stage across a
broker restart (kombu may have lost that message) gets it again; one that has not waited
across a restart is left alone. The stages go to a queue nobody consumes, to be counted."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest

from tasks.reaper import broker_started_at, reap
from tasks.settings import Settings
from tasks.store import store_key
from tests.conftest import encode, photo, routes_to

pytestmark = pytest.mark.integration

PARKED = "reaper-parked"


@pytest.fixture
def app(redis_server):
    from web import create_app

    flask_app = create_app(Settings(routes=routes_to(PARKED)))
    flask_app.config["TESTING"] = True
    return flask_app


def _submit(app) -> str:
    answer = app.test_client().post("/api/v1/jobs", content_type="multipart/form-data",
                                    data={"image": (io.BytesIO(encode(photo(size=64))), "p.png"), "style": "sketch"})
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["id"]


def _waiting(redis_client) -> list[str]:
    """Job ids of the stage messages parked in the queue."""
    bodies = (base64.b64decode(json.loads(raw)["body"]) for raw in redis_client.lrange(PARKED, 0, -1))
    return [json.loads(body)[0][0] for body in bodies]  # [args, kwargs, embed]; args = [job_id]


def _age(redis_client, job_id: str, *, updated_at: float) -> None:
    key = store_key("job", job_id)
    record = json.loads(redis_client.get(key))
    record["updated_at"] = updated_at
    redis_client.set(key, json.dumps(record), keepttl=True)


def test_a_job_that_waited_across_a_broker_restart_is_enqueued_again(app, redis_client):
    rt = app.extensions["pixelmill"]
    redis_client.delete(PARKED)
    while redis_client.info("server")["uptime_in_seconds"] < 2:  # its start is known to the second:
        time.sleep(0.1)  # a change within a second of it may count as before (one extra message)
    before, after = _submit(app), _submit(app)
    rt.store.start_stage(after, "encode", queue="cpu", worker="w@h")
    rt.store.finish_stage(after, "encode", outputs={})  # waits for generate, updated just now
    started = broker_started_at(rt, now=time.time())
    assert started is not None and started <= time.time()
    _age(redis_client, before, updated_at=started - 5)  # as if it had waited since before the broker started
    redis_client.delete(PARKED)

    report = reap(rt)

    # (other modules may leave unfinished jobs in the store: only this test's two are looked at)
    assert before in report.requeued and after not in report.requeued
    assert _mine(_waiting(redis_client), before, after) == [before]  # its chain again, from its first stage
    assert _mine(reap(rt).requeued, before, after) == []  # once: the requeue is a change after the restart


def _mine(job_ids: list[str], *mine: str) -> list[str]:
    return [job_id for job_id in job_ids if job_id in mine]


def _in_flight(app, redis_client, *, lease: str | None) -> str:
    """A job whose encode started with ``lease`` as its holder (None: no lease at all)."""
    rt = app.extensions["pixelmill"]
    job_id = _submit(app)
    rt.store.start_stage(job_id, "encode", queue="cpu", worker="w@h",
                         lease=(lease, 30) if lease else None)
    redis_client.delete(PARKED)
    return job_id


def test_a_stage_held_by_a_live_worker_is_left_alone(app, redis_client):
    from tasks.leases import current_holder, lease_key

    job_id = _in_flight(app, redis_client, lease=str(current_holder()))  # this very process: alive
    assert 0 < redis_client.ttl(lease_key(job_id, "encode")) <= 30
    assert job_id not in reap(app.extensions["pixelmill"]).requeued
    assert job_id not in _waiting(redis_client)


@pytest.mark.parametrize("why", ["lapsed", "holder gone"])
def test_a_stage_whose_worker_is_gone_is_enqueued_again_once(app, redis_client, why):
    import subprocess
    import sys

    from tasks.leases import Holder, current_holder

    if why == "lapsed":
        holder = None  # its lease expired: no renewal for stage_lease_s
    else:  # a process of this machine that has exited (a killed worker)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        holder = str(Holder(current_holder().hostname, int(dead.stdout), "0123456789ab"))
    rt = app.extensions["pixelmill"]
    job_id = _in_flight(app, redis_client, lease=holder)

    report = reap(rt)

    assert job_id in report.requeued
    assert _mine(_waiting(redis_client), job_id) == [job_id]  # its chain again, from the stage in flight
    job = rt.store.fetch(job_id)
    assert job.stages["encode"].requeued_at and not job.stages["encode"].is_in_flight()
    assert job_id not in reap(rt).requeued  # it waits for that message now, not for a lease


def test_the_finish_of_a_stage_drops_its_lease(app, redis_client):
    from tasks.leases import current_holder, lease_key

    job_id = _in_flight(app, redis_client, lease=str(current_holder()))
    app.extensions["pixelmill"].store.finish_stage(job_id, "encode", outputs={})
    assert not redis_client.exists(lease_key(job_id, "encode"))


def test_the_default_limits_recover_a_dead_worker_in_well_under_a_minute():
    defaults = Settings()
    assert defaults.stage_lease_s + defaults.reaper_interval_s <= 45
    assert defaults.visibility_timeout >= 3600  # still the last resort, untouched
