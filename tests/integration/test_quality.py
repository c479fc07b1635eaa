"""Quality levels (tasks/quality.py): a level fills in defaults the caller did not send and picks
the class of worker — the queue — that serves its diffusion stages, and the record says so."""

from __future__ import annotations

import io

import pytest

from tasks.jobs import JobParams
from tasks.quality import apply_quality
from tests.conftest import encode, photo, wait_for_job

pytestmark = pytest.mark.integration

LEVELS = {"draft": {"steps": 4, "size": 64, "queue": "cpu"}, "best": {"steps": 12, "size": 96, "queue": "gpu"}}


def test_a_level_fills_in_only_what_was_not_sent():
    assert apply_quality(JobParams(engine="diffusion", quality="draft"), LEVELS).steps == 4
    sent = apply_quality(JobParams(engine="diffusion", quality="draft", steps=30), LEVELS)
    assert (sent.steps, sent.size) == (30, 64)
    assert apply_quality(JobParams(engine="diffusion"), LEVELS) == JobParams(engine="diffusion")


def test_a_draft_job_is_served_by_the_worker_class_its_level_names(redis_server, workers, tiny_model):
    from tasks.settings import Settings
    from web import create_app

    app = create_app(Settings(quality_levels=LEVELS))
    client = app.test_client()
    answer = client.post("/api/v1/jobs", content_type="multipart/form-data", data={
        "image": (io.BytesIO(encode(photo(size=96))), "p.png"), "engine": "diffusion", "quality": "draft",
        "strength": "0.5", "prompt": "a photo"})
    assert answer.status_code == 202, answer.get_json()
    job = wait_for_job(lambda i: client.get(f"/api/v1/jobs/{i}").get_json(), answer.get_json()["id"])
    assert job["status"] == "succeeded", job
    assert job["params"]["quality"] == "draft" and (job["params"]["steps"], job["params"]["size"]) == (4, 64)
    assert job["stages"]["encode"]["queue"] == job["stages"]["generate"]["queue"] == "cpu"  # not the gpu queue
