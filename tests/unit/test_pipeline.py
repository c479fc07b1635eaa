"""Routing policy, chain building, content keys, blobs and the latent store."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from cache.keys import latent_key, pixels_digest
from cache.latents import LatentStore
from cache.latents import latent_redis_key
from tasks.blobs import BlobNotFound, BlobStore
from tasks.jobs import Job, JobParams
from tasks.pipeline import route_for, stage_queue
from tasks.settings import STAGES, Settings


@pytest.mark.parametrize(("stage", "engine", "queue"), [
    ("encode", "diffusion", "gpu"),
    ("generate", "diffusion", "gpu"),
    ("encode", "style", "cpu"),
    ("generate", "style", "cpu"),
    ("enhance", "diffusion", "cpu"),
    ("audit", "style", "cpu"),
    ("notify", "style", "io"),
])
def test_default_routes(stage, engine, queue):
    assert route_for(stage, engine) == queue


def test_route_overrides_win():
    assert route_for("generate", "diffusion", overrides={"generate:diffusion": "cpu"}) == "cpu"
    with pytest.raises(KeyError):
        route_for("paint", "style")


@pytest.mark.parametrize(("routes", "fragment"), [
    ({"generate:difusion": "cpu"}, "'generate:difusion'"), ({"paint:style": "cpu"}, "'paint:style'"),
    ({"generate": "cpu"}, "<stage>:<engine>"), ({"audit:*": " "}, "names no queue"),
])
def test_a_route_that_would_be_ignored_is_refused(routes, fragment):
    with pytest.raises(ValidationError) as err:
        Settings(routes=routes)
    assert fragment in str(err.value)


def test_each_stage_has_its_queue_by_route_and_priority():
    job = Job.create(tenant="t", params=JobParams(engine="diffusion", seed=3, priority="high"), input_ref="0" * 64 + ".png")
    settings = Settings(routes={"audit:*": "io"})
    assert [stage_queue(job, stage, settings) for stage in STAGES] == ["gpu.high", "gpu.high", "cpu.high", "io"]


def test_latent_key_sees_content_and_encoder_not_prompt():
    image = np.zeros((64, 64, 3), np.uint8)
    base = dict(pixels=pixels_digest(image), model="m", revision=None, size=(64, 64), dtype="fp32", scope="tenant:a")
    assert latent_key(**base) == latent_key(**base)
    for change in ({"model": "m2"}, {"revision": "r1"}, {"size": (64, 72)}, {"dtype": "fp16"},
                   {"scope": "tenant:b"}, {"crop": "top"}, {"rotation": 90}):
        assert latent_key(**{**base, **change}) != latent_key(**base)
    other = image.copy()
    other[0, 0, 0] = 1
    assert pixels_digest(other) != pixels_digest(image)


def test_blob_store_is_content_addressed(tmp_path):
    blobs = BlobStore(tmp_path)
    ref = blobs.save(b"hello")
    assert ref == blobs.save(b"hello") and ref.endswith(".png")
    assert blobs.fetch(ref) == b"hello"
    assert not list(tmp_path.rglob(".tmp-*"))
    with pytest.raises(BlobNotFound):
        blobs.fetch("../../etc/passwd")
    with pytest.raises(BlobNotFound):
        blobs.fetch("f" * 64 + ".png")


def test_latent_store_uses_safetensors_with_ttl(redis_client):
    store = LatentStore(redis_client, ttl_s=100)
    latent = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    assert store.save("k1", latent)
    raw = redis_client.get(latent_redis_key("k1"))
    assert b"pickle" not in raw and raw[8:9] == b"{"  # safetensors: 8-byte header length, then JSON
    assert 0 < redis_client.ttl(latent_redis_key("k1")) <= 100
    np.testing.assert_array_equal(store.fetch("k1"), latent)
    assert store.fetch("missing") is None
    small = LatentStore(redis_client, ttl_s=100, max_bytes=100)
    assert not small.save("k2", latent) and small.fetch("k2") is None


def test_latent_store_outage_is_a_miss():
    import redis

    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    store = LatentStore(down, ttl_s=10)
    assert store.fetch("k") is None
    assert store.save("k", np.zeros((1, 4, 2, 2), np.float32)) is False
