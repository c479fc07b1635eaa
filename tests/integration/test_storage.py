"""Bounded storage against a private Redis: the blobs of expired jobs are deleted by the reaper,
and a blob another live job shares stays. Jobs go to a queue nobody consumes and are moved with the
store's own transitions (as workers would, saving outputs through the same blob store), so their
short job_ttl_s is their only clock. Prints the bytes on disk (docs/reliability.md)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from tasks import reaper
from tasks.blobs import INDEX
from tasks.errors import JobNotFound
from tasks.jobs import JobStatus
from tasks.settings import STAGES, Settings
from tests.conftest import encode, photo, routes_to

pytestmark = pytest.mark.integration

PARKED = routes_to("storage-parked")
SHORT_TTL_S = 3
JOBS = 20


def _app(data_dir, *, job_ttl_s: int):
    from web import create_app

    app = create_app(Settings(routes=PARKED, data_dir=data_dir, job_ttl_s=job_ttl_s))
    app.config["TESTING"] = True
    return app


def _submit(app, image: bytes) -> str:
    response = app.test_client().post("/api/v1/jobs", content_type="multipart/form-data",
                                      data={"image": (io.BytesIO(image), "p.png"), "style": "sketch"})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _run(rt, job_id: str, *, seed: int) -> None:
    """Each stage saves an output of its own, as the real stages do."""
    rng = np.random.default_rng(seed)
    for stage in STAGES:
        rt.store.start_stage(job_id, stage, queue="cpu", worker="w@h")
        output = rt.blobs.save(encode(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)), ext="png")
        rt.store.finish_stage(job_id, stage, outputs={stage: output}, device_s=0.1,
                              end=JobStatus.SUCCEEDED if stage == STAGES[-1] else None)


def test_the_reaper_deletes_the_blobs_of_expired_jobs_but_not_a_shared_one(tmp_path, redis_client, monkeypatch):
    short, long = _app(tmp_path, job_ttl_s=SHORT_TTL_S), _app(tmp_path, job_ttl_s=3600)
    rt, live_rt = short.extensions["pixelmill"], long.extensions["pixelmill"]
    images = [encode(photo(name, size=256 + i)) for i, name in enumerate(["astronaut", "coffee", "chelsea", "rocket"]
                                                                           * (JOBS // 4))]
    ids = [_submit(short, image) for image in images]
    for seed, job_id in enumerate(ids):
        _run(rt, job_id, seed=seed)
    shared = _submit(long, images[0])  # a live job on the same input as the first short one
    shared_input = live_rt.store.fetch(shared).input_ref
    refs = {ref for job_id in ids for ref in (rt.store.fetch(job_id).input_ref,
                                              *rt.store.fetch(job_id).outputs.values())}
    assert shared_input in refs and all(rt.blobs.exists(ref) for ref in refs)
    before = rt.blobs.disk_bytes()

    monkeypatch.setattr(reaper, "BLOB_GRACE_S", 0)
    assert reaper.reap(rt).blobs_deleted == 0  # nothing has expired yet
    time.sleep(SHORT_TTL_S + 1.5)
    with pytest.raises(JobNotFound):
        rt.store.fetch(ids[0])  # the records are gone (their TTL); their blobs are still on disk
    assert all(rt.blobs.exists(ref) for ref in refs)

    report = reaper.reap(rt)

    after = rt.blobs.disk_bytes()
    print(f"\nblobs on disk: {before} bytes after {JOBS} jobs ({len(refs)} blobs), "
          f"{after} bytes once they expired and the reaper ran ({report.blobs_deleted} blobs, "
          f"{report.blob_bytes_deleted} bytes deleted)")
    assert report.blobs_deleted == len(refs) - 1 and report.blob_bytes_deleted == before - after
    assert rt.blobs.exists(shared_input), "a blob a live job uses was deleted"
    assert [ref for ref in refs if rt.blobs.exists(ref)] == [shared_input]
    assert after == rt.blobs.path(shared_input).stat().st_size
    assert redis_client.zscore(INDEX, shared_input) > time.time() + 3000  # kept as long as the live job
    assert reaper.reap(rt).blobs_deleted == 0


def test_a_blob_saved_again_while_it_is_deleted_is_kept(tmp_path, redis_client):
    """The race the index guards: a writer claims a blob the reaper has just taken off the index."""
    rt = _app(tmp_path, job_ttl_s=SHORT_TTL_S).extensions["pixelmill"]
    ref = rt.blobs.save(b"\x89PNG same bytes", ext="png")
    redis_client.zadd(INDEX, {ref: time.time() - 10})  # its last job expired
    real_take = rt.blobs._take_expired

    def take_then_save(**kwargs):
        taken = real_take(**kwargs)
        assert rt.blobs.save(b"\x89PNG same bytes", ext="png") == ref  # a new job, between take and delete
        return taken

    rt.blobs._take_expired = take_then_save
    assert rt.blobs.delete_expired().count == 0
    assert rt.blobs.exists(ref) and rt.blobs.fetch(ref) == b"\x89PNG same bytes"
