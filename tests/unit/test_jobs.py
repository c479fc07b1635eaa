"""The state machine, job parameters and the job store on a real Redis."""

from __future__ import annotations

import time

import orjson
import pytest
from pydantic import ValidationError

from tasks.errors import InvalidTransition, JobNotFound
from tasks.jobs import ALLOWED, TERMINAL, Job, JobParams, JobStatus, can_move
from tasks.store import JobStore, store_key


@pytest.mark.parametrize("status", list(JobStatus))
def test_terminal_states_never_move(status):
    assert status.is_terminal() == (status in TERMINAL)
    if status.is_terminal():
        assert ALLOWED[status] == frozenset()


@pytest.mark.parametrize(("current", "new", "ok"), [
    (JobStatus.QUEUED, JobStatus.ENCODING, True),
    (JobStatus.ENCODING, JobStatus.ENCODING, True),  # a re-delivered stage re-enters
    (JobStatus.ENCODING, JobStatus.QUEUED, False),
    (JobStatus.GENERATING, JobStatus.ENCODING, False),
    (JobStatus.AUDITING, JobStatus.SUCCEEDED, True),
    (JobStatus.ENHANCING, JobStatus.SUCCEEDED, False),  # only the audit may end a job well
    (JobStatus.QUEUED, JobStatus.CANCELED, True),
    (JobStatus.GENERATING, JobStatus.FAILED, True),
    (JobStatus.SUCCEEDED, JobStatus.FAILED, False),
    (JobStatus.CANCELED, JobStatus.ENCODING, False),
])
def test_can_move(current, new, ok):
    assert can_move(current, new) is ok


@pytest.mark.parametrize(("params", "fragment"), [
    ({"steps": 0}, "steps"),
    ({"steps": 500}, "steps"),
    ({"strength": 0}, "strength"),
    ({"upscale": 3}, "upscale"),
    ({"style": "vaporwave"}, "style"),
    ({"engine": "diffusion", "steps": 2, "strength": 0.3}, "raise steps or strength"),
    ({"prompt": "x" * 1001}, "prompt"),
    ({"colour": "red"}, "colour"),
])
def test_params_refuse_bad_values(params, fragment):
    with pytest.raises(ValidationError) as err:
        JobParams(**params)
    assert fragment in str(err.value)


def _job() -> Job:
    return Job.create(tenant="t1", params=JobParams(seed=1), input_ref="0" * 64 + ".png")


def test_store_round_trip_and_transitions(redis_client):
    store = JobStore(redis_client, ttl_s=60)
    job = store.create(_job())
    assert store.fetch(job.id).status is JobStatus.QUEUED
    assert 0 < redis_client.ttl(store_key("job", job.id)) <= 60

    store.start_stage(job.id, "encode", queue="cpu", worker="w1")
    done = store.finish_stage(job.id, "encode", outputs={"normalized": "a" * 64 + ".png"})
    assert done.status is JobStatus.ENCODING
    assert done.stages["encode"].done and done.stages["encode"].attempts == 1
    assert done.stages["encode"].seconds is not None
    assert done.outputs["normalized"].startswith("a")

    for stage in ("generate", "enhance", "audit"):
        store.start_stage(job.id, stage, queue="cpu", worker="w1")
    final = store.finish_stage(job.id, "audit", outputs={"result": "b" * 64 + ".png"},
                               end=JobStatus.SUCCEEDED, audit={"verdict": "pass"})
    assert final.status is JobStatus.SUCCEEDED and final.finished_at and final.audit == {"verdict": "pass"}
    assert 0 < redis_client.ttl(store_key("job", job.id)) <= 60  # TTL kept through updates
    # the record is the job as to_dict gives it (orjson dumps the dataclass itself: tasks.store._dumps)
    assert redis_client.get(store_key("job", job.id)) == orjson.dumps(final.to_dict())
    assert Job.from_dict(orjson.loads(redis_client.get(store_key("job", job.id)))) == final

    with pytest.raises(InvalidTransition):
        store.fail(job.id, code="x", message="too late")
    assert store.fetch(job.id).status is JobStatus.SUCCEEDED


def test_store_refuses_skipping_back_and_unknown_jobs(redis_client):
    store = JobStore(redis_client)
    job = store.create(_job())
    store.start_stage(job.id, "generate", queue="gpu", worker="w")
    with pytest.raises(InvalidTransition):
        store.start_stage(job.id, "encode", queue="gpu", worker="w")
    with pytest.raises(JobNotFound):
        store.fetch("nope")
    failed = store.fail(job.id, code="boom", message="it broke")
    assert failed.error == {"code": "boom", "message": "it broke"}
    with pytest.raises(InvalidTransition):
        store.finish_stage(job.id, "generate", outputs={})


def test_a_transition_on_a_stale_record_is_made_again_on_the_current_one(redis_client):
    worker, web = JobStore(redis_client), JobStore(redis_client)  # two processes
    job = worker.create(_job())
    worker.start_stage(job.id, "encode", queue="cpu", worker="w")  # the worker now knows the record it wrote
    web.cancel(job.id)
    with pytest.raises(InvalidTransition):  # its known record says "encoding"; the server's says "canceled"
        worker.finish_stage(job.id, "encode", outputs={"normalized": "a" * 64 + ".png"})
    assert worker.fetch(job.id).status is JobStatus.CANCELED and not worker.fetch(job.id).stages["encode"].done

    other = worker.create(_job())
    worker.start_stage(other.id, "encode", queue="cpu", worker="w")
    web.touch(other.id)  # a harmless change by someone else: the worker's next transition still applies
    done = worker.finish_stage(other.id, "encode", outputs={"normalized": "a" * 64 + ".png"})
    assert done.stages["encode"].done and worker.fetch(other.id).stages["encode"].done


def test_a_stage_starts_from_the_record_its_message_carried(redis_client):
    """A stage message queued with a transition carries the record it wrote (tasks.pipeline): the
    start's compare-and-set begins there, with no read; a carried record that is no longer the
    job's (changed since, or canceled) only costs the change made again on the current one."""
    import orjson

    worker, web = JobStore(redis_client), JobStore(redis_client)  # the worker has written nothing yet
    job = web.create(_job())
    carried = redis_client.get(store_key("job", job.id))
    reads: list[str] = []
    original_get = redis_client.get
    redis_client.get = lambda key: reads.append(key) or original_get(key)
    try:
        started = worker.start_stage(job.id, "encode", queue="cpu", worker="w", record=carried)
    finally:
        redis_client.get = original_get
    assert reads == [] and started.status is JobStatus.ENCODING and started.stages["encode"].attempts == 1

    other = web.create(_job())
    stale = redis_client.get(store_key("job", other.id))
    web.touch(other.id)  # changed after its message was queued
    started = worker.start_stage(other.id, "encode", queue="cpu", worker="w", record=stale)
    assert started.stages["encode"].attempts == 1
    assert orjson.loads(redis_client.get(store_key("job", other.id)))["status"] == "encoding"

    canceled = web.create(_job())
    stale = redis_client.get(store_key("job", canceled.id))
    web.cancel(canceled.id)
    with pytest.raises(InvalidTransition):  # the carried record says "queued"; the job's, "canceled"
        worker.start_stage(canceled.id, "encode", queue="cpu", worker="w", record=stale)
    assert web.fetch(canceled.id).status is JobStatus.CANCELED and web.fetch(canceled.id).stages["encode"].attempts == 0


def test_a_start_sent_ahead_is_read_behind_the_next_transition(redis_client):
    """``start_stage(ahead=True)`` sends the start and returns before Redis answers; the job's next
    transition goes behind it on the same connection and reads both answers. Redis has applied the
    start (the live state, the attempt a poison input is caught by, the lease) while the stage
    works; the connection goes back to the pool."""
    worker, web = JobStore(redis_client), JobStore(redis_client)
    job = web.create(_job())
    carried = redis_client.get(store_key("job", job.id))
    started = worker.start_stage(job.id, "encode", queue="cpu", worker="w", record=carried,
                                 lease=("holder", 30), ahead=True)
    assert started.status is JobStatus.ENCODING and started.stages["encode"].attempts == 1
    deadline = time.monotonic() + 5
    while orjson.loads(redis_client.get(store_key("job", job.id)))["status"] != "encoding":  # written meanwhile
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert redis_client.get(store_key("lease", job.id, "encode")) == b"holder"
    done = worker.finish_stage(job.id, "encode", outputs={"normalized": "a" * 64 + ".png"})
    stored = web.fetch(job.id)
    assert done.stages["encode"].done and stored.stages["encode"].done and stored.stages["encode"].attempts == 1
    assert stored.stages["encode"].worker == "w" and redis_client.get(store_key("lease", job.id, "encode")) is None
    pool = redis_client.connection_pool
    assert not pool._in_use_connections

    # no transition follows (a stage interrupted): settle_start reads the answer
    other = web.create(_job())
    worker.start_stage(other.id, "encode", queue="cpu", worker="w", record=redis_client.get(store_key("job", other.id)),
                       ahead=True)
    worker.settle_start(other.id)
    worker.settle_start(other.id)  # nothing left: no-op
    assert web.fetch(other.id).status is JobStatus.ENCODING and not pool._in_use_connections


def test_a_start_sent_ahead_that_did_not_take_writes_nothing_of_its_stage(redis_client):
    """The job changed between the hand-off that carried its record and the start sent ahead (a
    cancel): the start does not take, and neither does what the stage sends behind it (made on the
    record the start would have written) — ``StartNotApplied``, nothing of the stage written, no
    message queued for the next one; the stage decides again on the current record."""
    from tasks.pipeline import StageMessage
    from tasks.store import StartNotApplied

    worker, web = JobStore(redis_client), JobStore(redis_client)
    message = StageMessage(queue="ahead-next", payload=b'{"body":"e30=","headers":{"task":"t"}}')
    redis_client.delete(message.queue)
    job = web.create(_job())
    carried = redis_client.get(store_key("job", job.id))
    web.cancel(job.id)
    worker.start_stage(job.id, "encode", queue="cpu", worker="w", record=carried, lease=("holder", 30), ahead=True)
    with pytest.raises(StartNotApplied):
        worker.finish_stage(job.id, "encode", outputs={"normalized": "a" * 64 + ".png"}, handoff=message)
    stored = web.fetch(job.id)
    assert stored.status is JobStatus.CANCELED and stored.stages["encode"].attempts == 0
    assert not stored.stages["encode"].done and not stored.outputs
    assert redis_client.llen(message.queue) == 0 and redis_client.get(store_key("lease", job.id, "encode")) is None
    with pytest.raises(InvalidTransition):  # deciding again, on the current record
        worker.start_stage(job.id, "encode", queue="cpu", worker="w", record=carried)

    # a failure sent behind a start that did not take is not written either
    failing = web.create(_job())
    carried = redis_client.get(store_key("job", failing.id))
    web.touch(failing.id)
    worker.start_stage(failing.id, "encode", queue="cpu", worker="w", record=carried, ahead=True)
    with pytest.raises(StartNotApplied):
        worker.fail(failing.id, code="stage_failed", message="boom")
    assert web.fetch(failing.id).status is JobStatus.QUEUED

    # the server lost its scripts (restarted): the start sent ahead did not run; the next one loads it again
    lost = web.create(_job())
    carried = redis_client.get(store_key("job", lost.id))
    redis_client.script_flush()
    worker.start_stage(lost.id, "encode", queue="cpu", worker="w", record=carried, ahead=True)
    with pytest.raises(StartNotApplied):
        worker.settle_start(lost.id)
    assert web.fetch(lost.id).status is JobStatus.QUEUED
    worker.start_stage(lost.id, "encode", queue="cpu", worker="w", record=carried, ahead=True)
    worker.finish_stage(lost.id, "encode", outputs={"normalized": "a" * 64 + ".png"})
    assert web.fetch(lost.id).stages["encode"].done and not redis_client.connection_pool._in_use_connections


def test_a_stage_message_carries_the_record_as_its_exact_text(redis_client):
    """The record rides in a stage message's header as a JSON string (tasks.transition.quote), put
    there by the script (a transition's hand-off) or by submit's MULTI: decoded, it is the stored
    record byte for byte — quotes, backslashes, newlines and non-ASCII text in it included."""
    import json

    import orjson

    from tasks.pipeline import RECORD_HEADER, StageMessage

    store = JobStore(redis_client)
    message = StageMessage(queue="carried-record", payload=orjson.dumps({"body": "e30=", "headers": {"task": "t"}}))
    redis_client.delete(message.queue)
    job = Job.create(tenant="t1", params=JobParams(seed=1, prompt='a "quoted" \\ back\nslash, café, 猫'),
                     input_ref="0" * 64 + ".png", input_name='say "cheese".png')
    store.create(job, handoff=message)  # submit's MULTI: the record spliced in Python
    store.start_stage(job.id, "encode", queue="cpu", worker="w")
    store.finish_stage(job.id, "encode", outputs={"normalized": "1" * 64 + ".png"}, handoff=message)  # the script
    written = redis_client.get(store_key("job", job.id))
    created, finished = (json.loads(raw) for raw in redis_client.lrange(message.queue, 0, -1)[::-1])
    for envelope in (created, finished):
        assert envelope["body"] == "e30=" and envelope["headers"]["task"] == "t"
        assert isinstance(envelope["headers"][RECORD_HEADER], str)
    assert orjson.loads(created["headers"][RECORD_HEADER])["status"] == "queued"
    assert finished["headers"][RECORD_HEADER].encode() == written
    assert orjson.loads(written)["params"]["prompt"] == 'a "quoted" \\ back\nslash, café, 猫'

    started = store.start_stage(job.id, "generate", queue="cpu", worker="w",
                                record=finished["headers"][RECORD_HEADER].encode())
    assert started.stages["generate"].attempts == 1 and started.stages["encode"].done
    redis_client.delete(message.queue)


def test_writes_that_fail_do_not_undo_the_transition(redis_client, caplog):
    store = JobStore(redis_client)
    job = store.create(_job())
    redis_client.set(store_key("progress", job.id), "not a hash")  # finish deletes it: fine
    redis_client.set("pixelmill:metrics:active", "not a hash")  # count_transition's HSET fails
    try:
        store.start_stage(job.id, "encode", queue="cpu", worker="w")
    finally:
        redis_client.delete("pixelmill:metrics:active")
    assert store.fetch(job.id).status is JobStatus.ENCODING
    assert "WRONGTYPE" in caplog.text


def test_progress_and_recent(redis_client):
    store = JobStore(redis_client)
    jobs = [store.create(_job()) for _ in range(3)]
    store.save_progress(jobs[0].id, stage="generate", step=3, steps=10)
    progress = store.fetch_progress(jobs[0].id)
    assert {k: progress[k] for k in ("stage", "step", "steps")} == {"stage": "generate", "step": 3, "steps": 10}
    assert abs(progress["at"] - time.time()) < 5  # the heartbeat the reaper reads
    recent_ids = [job.id for job in store.recent("t1", limit=3)]
    assert recent_ids == [job.id for job in reversed(jobs)]
    assert store.recent("someone-else") == []


def test_lease_holders_round_trip_and_a_dead_local_process_is_gone():
    import subprocess
    import sys

    from tasks.leases import Holder, current_holder

    me = current_holder()
    assert Holder.parse(str(me)) == me and not me.is_gone()
    assert Holder.parse("garbage") is None
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    assert Holder(me.hostname, dead, "x").is_gone()
    assert not Holder("another-machine", dead, "x").is_gone()  # judged by its lease's TTL instead
    assert Holder(me.hostname, me.pid, "an-earlier-incarnation").is_gone()
