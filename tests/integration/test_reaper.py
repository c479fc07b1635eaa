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
from tasks.store import key_for
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
    key = key_for("job", job_id)
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

    assert before in report.requeued and after not in report.requeued
    assert _waiting(redis_client) == [before]  # its chain again, from its first stage
    assert reap(rt).requeued == []  # once: the requeue is a change after the restart
