"""The latent cache on real workers: two Celery workers (prefork, one process each) with the cache
on a Redis of its own (allkeys-lru), the broker and job store on the session's (noeviction).

One test per row of the issue: content keys (1), parameter sensitivity (2), scopes (3), tiers
and TTLs (4), single-flight across two workers (5), whole-result reuse (6), visibility (7), and
clearing, limits and a cache outage (8). Tests share the module's stack and run in order; each
uses photos of its own, so that one test's entries do not answer another's lookups.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import redis
from PIL import Image

from cache.fingerprint import fingerprint, hamming
from cache.keys import EncoderSpec
from cache.scopes import scope_for
from tasks.caching import CROP, ROTATION
from tasks.jobs import JobParams
from tasks.models import resolve_model
from tasks.present import job_payload
from tasks.settings import Settings
from tasks.submit import Upload, submit_job
from tests.conftest import SESSION_DIR, encode, photo, start_worker, stop_worker, wait_for_job, wait_worker_ready
from tests.corpus import jpeg_with_and_without_exif, resized
from workers.diffusion import normalise_for_diffusion
from stack.redis_server import RedisServer

pytestmark = pytest.mark.integration

FAST = {"engine": "diffusion", "steps": 2, "strength": 0.5, "size": 64}
MAX_ENTRY_BYTES = 72 * 1024  # a 512-px latent (64 KiB) fits, a 576-px one (81 KiB) does not
WORKERS = ("cache-a", "cache-b")


@dataclass
class Stack:
    cache_redis: RedisServer
    workers: dict[str, subprocess.Popen]
    app: object
    env: dict[str, str]

    @property
    def client(self):
        return self.app.test_client()

    @property
    def rt(self):
        return self.app.extensions["pixelmill"]


def _hostname(name: str) -> str:
    return f"{name}-{os.getpid()}@{socket.gethostname()}"


def _set_consuming(hosts: dict[str, list[str]], *, on: bool) -> None:
    """Start or stop the given workers consuming their cpu/gpu queues (Celery remote control)."""
    from tasks.celery_app import app

    for host, queues in hosts.items():
        for queue in queues:
            if on:
                app.control.add_consumer(queue, destination=[host], reply=True, timeout=5)
            else:
                app.control.cancel_consumer(queue, destination=[host], reply=True, timeout=5)


def _pipeline_queues(host: str) -> list[str]:
    from tasks.celery_app import app

    active = app.control.inspect(destination=[host], timeout=2).active_queues() or {}
    return [q["name"] for q in active.get(host, []) if q["name"] in {"cpu", "gpu"}]


@pytest.fixture(scope="module")
def stack(redis_server, tiny_model) -> Iterator[Stack]:
    from tasks.celery_app import app as celery
    from web import create_app

    cache_redis = RedisServer(data_dir=SESSION_DIR / "cache-redis", appendonly=False,
                              maxmemory_policy="allkeys-lru", maxmemory="64mb").start()
    env = {"PIXELMILL_CACHE_REDIS_URL": cache_redis.url, "PIXELMILL_PRELOAD_MODELS": "1",
           "PIXELMILL_CACHE_MAX_ENTRY_BYTES": str(MAX_ENTRY_BYTES), "PIXELMILL_SINGLEFLIGHT_TIMEOUT_S": "60"}
    # other workers of the session (other modules' fixtures) stop taking pipeline work meanwhile
    ours = {_hostname(name) for name in WORKERS + ("cache-shared",)}
    others = {host: _pipeline_queues(host) for reply in celery.control.ping(timeout=1) for host in reply
              if host not in ours}
    _set_consuming(others, on=False)
    procs = {name: start_worker(queues="cpu,gpu", concurrency=1, name=name, extra_env=env) for name in WORKERS}
    try:
        for name, proc in procs.items():
            wait_worker_ready(proc, name=name)
        settings = Settings(cache_redis_url=cache_redis.url, cache_max_entry_bytes=MAX_ENTRY_BYTES,
                            rate_limit_per_minute=10_000)
        yield Stack(cache_redis=cache_redis, workers=procs, app=create_app(settings), env=env)
    finally:
        for proc in procs.values():
            proc.terminate()  # both at once, then wait for each
        for proc in procs.values():
            stop_worker(proc)
        _set_consuming(others, on=True)
        cache_redis.stop()


# --- helpers --------------------------------------------------------------------------------

def _submit(stack: Stack, data: bytes, *, name: str = "photo.png", **params) -> str:
    response = stack.client.post("/api/v1/jobs", data={"image": (io.BytesIO(data), name),
                                                       "params": json.dumps(FAST | params)},
                                 content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _submit_as(stack: Stack, tenant: str, data: bytes, **params) -> str:
    job = submit_job(stack.rt, tenant=tenant, upload=Upload(name="photo.png", data=data),
                     params=JobParams(**(FAST | params)))
    return job.id


def _wait(stack: Stack, job_id: str) -> dict:
    job = wait_for_job(lambda i: job_payload(stack.rt.store.fetch(i)), job_id, timeout_s=90)
    assert job["status"] == "succeeded", job
    return job


def _run(stack: Stack, data: bytes, **params) -> dict:
    return _wait(stack, _submit(stack, data, **params))


def _encode_cache(job: dict) -> tuple[bool, dict]:
    stage = job["stages"]["encode"]
    return stage["cached"], stage["cache"] or {}


def _png(image: np.ndarray) -> bytes:
    return encode(image, "PNG")


# --- 1. keys see content, not bytes -----------------------------------------------------------

def test_re_saved_converted_stripped_or_resized_photos_hit_and_different_ones_miss(stack: Stack) -> None:
    original = photo("chelsea")
    first = _run(stack, _png(original))
    assert _encode_cache(first)[0] is False

    webp = encode(original, "WEBP")  # PIL's default: lossy, quality 80
    with_exif, without_exif = jpeg_with_and_without_exif(original)
    same = {
        "jpeg-q85": encode(original, "JPEG", quality=85),
        "jpeg-q80": encode(original, "JPEG", quality=80),
        "png->webp": webp,
        "webp->png": _png(np.asarray(Image.open(io.BytesIO(webp)).convert("RGB"))),
        "jpeg-with-exif": with_exif,
        "exif-stripped": without_exif,
        "resized-by-1px": _png(resized(-1, -1)(original)),
    }
    different = {
        "flipped": _png(np.ascontiguousarray(original[:, ::-1])),
        "brighter+10": _png(np.clip(original.astype(int) + 10, 0, 255).astype(np.uint8)),
        "another-photo": _png(photo("coffee")),
    }
    ids = {label: _submit(stack, data, name=f"{label}.img") for label, data in (same | different).items()}
    jobs = {label: _wait(stack, job_id) for label, job_id in ids.items()}

    for label in same:
        cached, cache = _encode_cache(jobs[label])
        assert cached and cache["match"] in {"exact", "near"}, (label, jobs[label]["stages"]["encode"])
        assert stack.rt.store.fetch(jobs[label]["id"]).outputs["latent"] == \
            stack.rt.store.fetch(first["id"]).outputs["latent"]
    for label in different:
        assert _encode_cache(jobs[label])[0] is False, (label, jobs[label]["stages"]["encode"])
    # the brighter photo lands in the same pHash bucket: the pixel check is what tells it apart
    fp_original = fingerprint(normalise_for_diffusion(original, size=64))
    fp_brighter = fingerprint(normalise_for_diffusion(np.clip(original.astype(int) + 10, 0, 255).astype(np.uint8),
                                                      size=64))
    assert hamming(fp_original.phash, fp_brighter.phash) <= stack.rt.settings.cache_hash_radius


# --- 2. parameter sensitivity ---------------------------------------------------------------------

def test_a_new_prompt_and_new_generation_parameters_reuse_the_latent_but_a_new_size_does_not(stack: Stack) -> None:
    data = _png(photo("astronaut", size=256))
    first = _run(stack, data, prompt="a cat", seed=1)
    other = _run(stack, data, prompt="a tiger", negative_prompt="blurry", guidance=3.0, steps=4, strength=0.75,
                 seed=2)
    bigger = _run(stack, data, prompt="a cat", seed=1, size=128)
    assert _encode_cache(first)[0] is False
    cached, cache = _encode_cache(other)
    assert cached is True and cache["match"] == "exact"
    assert other["stages"]["generate"]["cached"] is False  # new parameters: generate runs
    assert _encode_cache(bigger)[0] is False  # the target resolution is part of the key


# --- 3. scopes ------------------------------------------------------------------------------------

def test_another_tenant_never_hits_your_entries(stack: Stack) -> None:
    data = _png(photo("astronaut", size=256))  # cached for the default tenant by the test above
    acme = _wait(stack, _submit_as(stack, "acme", data, prompt="a cat"))
    again = _wait(stack, _submit_as(stack, "acme", data, prompt="a dog"))
    assert _encode_cache(acme)[0] is False and _encode_cache(again)[0] is True


def test_a_shared_scope_only_by_setting(stack: Stack) -> None:
    ours = {_hostname(name): ["cpu", "gpu"] for name in WORKERS}
    _set_consuming(ours, on=False)
    shared = start_worker(queues="cpu,gpu", concurrency=1, name="cache-shared",
                          extra_env=stack.env | {"PIXELMILL_CACHE_SCOPE": "shared"})
    try:
        wait_worker_ready(shared, name="cache-shared")
        data = _png(photo("moon"))
        initech = _wait(stack, _submit_as(stack, "initech", data))
        umbrella = _wait(stack, _submit_as(stack, "umbrella", data))
        assert _encode_cache(initech)[0] is False and _encode_cache(umbrella)[0] is True
    finally:
        stop_worker(shared)
        _set_consuming(ours, on=True)
    from web import create_app

    shared_app = create_app(Settings(cache_redis_url=stack.cache_redis.url, cache_scope="shared"))
    refused = shared_app.test_client().delete("/api/v1/cache")
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "cache_shared"


# --- 4. tiers -------------------------------------------------------------------------------------

def test_hot_tier_in_the_worker_then_redis_and_every_key_has_a_ttl(stack: Stack) -> None:
    a, b = (_hostname(name) for name in WORKERS)
    data = _png(photo("camera"))
    _set_consuming({b: ["cpu", "gpu"]}, on=False)  # only worker A
    try:
        first = _run(stack, data, prompt="one")
        second = _run(stack, data, prompt="two")
    finally:
        _set_consuming({b: ["cpu", "gpu"]}, on=True)
    assert first["stages"]["generate"]["cache"]["latent_tier"] == "hot"  # encoded in this process
    assert _encode_cache(second)[1]["tier"] == "hot"
    _set_consuming({a: ["cpu", "gpu"]}, on=False)  # only worker B, whose hot tier is empty
    try:
        third = _run(stack, data, prompt="three")
    finally:
        _set_consuming({a: ["cpu", "gpu"]}, on=True)
    assert _encode_cache(third)[1]["tier"] == "redis"
    assert third["stages"]["generate"]["cache"]["latent_tier"] == "redis"

    cache = redis.Redis.from_url(stack.cache_redis.url)
    keys = list(cache.scan_iter(match="*"))
    assert keys and all(k.startswith(b"pixelmill:cache:") for k in keys)
    assert not [k for k in keys if cache.ttl(k) < 0], "every cache key carries a TTL"
    raw = cache.get(next(k for k in keys if b":latent:" in k))
    assert raw[8:9] == b"{" and b"pickle" not in raw  # safetensors
    assert cache.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    broker = redis.Redis.from_url(stack.rt.settings.redis_url)
    assert broker.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    policy = stack.client.get("/api/v1/cache").get_json()["memory_policy"]
    assert policy["ok"] and policy["shared_with_broker"] is False


# --- 5. single-flight -----------------------------------------------------------------------------

def test_two_workers_missing_on_the_same_photo_encode_it_once(stack: Stack) -> None:
    """Both workers miss at once: one encodes, the other waits for it and reuses its latent.

    To make "at once" certain rather than likely (a tiny-model encode takes ~0.2 s), the test
    itself holds the single-flight lock while both jobs reach it, then lets go without storing
    anything — as a worker that died would: one worker takes over, the other waits for that one.
    """
    image = photo("rocket")
    scope = scope_for(tenant=stack.rt.settings.default_tenant, mode="tenant")
    model = resolve_model(stack.rt.settings)  # the default model: the library's "tiny", by its files' fingerprint
    spec = EncoderSpec(model=model.name, revision=model.revision, dtype="fp32", size=512, crop=CROP,
                       rotation=ROTATION)
    lock = stack.rt.cache.lock_key(stack.rt.cache.ref_for(normalise_for_diffusion(image, size=512), spec=spec,
                                                          scope=scope))
    cache = redis.Redis.from_url(stack.cache_redis.url)
    assert cache.set(lock, "held by the test", px=30_000, nx=True)
    data = _png(image)
    files = [(io.BytesIO(data), "rocket-1.png"), (io.BytesIO(data), "rocket-2.png")]
    response = stack.client.post("/api/v1/batches", data={"images": files, "params": json.dumps(FAST | {"size": 512})},
                                 content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    ids = [job["id"] for job in response.get_json()["jobs"]]
    deadline = time.monotonic() + 30
    while not all(stack.rt.store.fetch(i).stages["encode"].started_at for i in ids):
        assert time.monotonic() < deadline, "both encodes should have started"
        time.sleep(0.05)
    time.sleep(0.5)  # both are past their lookups now, waiting on the lock
    assert all(stack.rt.store.fetch(i).stages["encode"].done is False for i in ids)
    cache.delete(lock)

    jobs = [_wait(stack, i) for i in ids]
    encodes = [job["stages"]["encode"] for job in jobs]
    assert {e["worker"] for e in encodes} == {_hostname(name) for name in WORKERS}  # one on each worker
    assert sorted(e["cached"] for e in encodes) == [False, True]  # the VAE ran once
    waiter = next(e for e in encodes if e["cached"])
    assert waiter["cache"]["waited_s"] > 0 and waiter["cache"]["tier"] == "redis"
    assert "waited for another worker" in waiter["cache_label"]
    assert len({stack.rt.store.fetch(i).outputs["latent"] for i in ids}) == 1


# --- 6. whole-result reuse ------------------------------------------------------------------------

def test_an_identical_request_is_answered_from_the_stored_result(stack: Stack) -> None:
    data = _png(photo("coins"))
    first = _run(stack, data, prompt="gold", seed=5)
    second = _run(stack, data, prompt="gold", seed=5)
    reseeded = _run(stack, data, prompt="gold", seed=6)
    assert first["stages"]["generate"]["cached"] is False
    generate = second["stages"]["generate"]
    assert generate["cached"] is True and generate["cache"]["tier"] == "results"
    assert stack.client.get(f"/api/v1/jobs/{second['id']}/result").data == \
        stack.client.get(f"/api/v1/jobs/{first['id']}/result").data
    assert reseeded["stages"]["generate"]["cached"] is False  # the seed is part of the result key
    page = stack.client.get(f"/jobs/{second['id']}").get_data(as_text=True)
    assert page.count('class="cache-badge served"') == 2  # encode and generate
    assert "identical request, stored result" in page and "served from cache" in page


# --- 7. visible -----------------------------------------------------------------------------------

def test_counters_per_tier_and_stage_are_exposed(stack: Stack) -> None:
    from web.cache_api import cache_metrics

    body = stack.client.get("/api/v1/cache").get_json()
    assert body["available"] and body["scope"] == {"mode": "tenant", "name": "tenant"}
    assert body["entries"]["latent"] >= 4 and body["entries"]["result"] >= 1
    tiers, stages = body["stats"]["tiers"], body["stats"]["stages"]
    for tier in ("hot", "redis", "results"):
        assert tiers[tier]["hits"] >= 1 and tiers[tier]["misses"] >= 1 and 0 < tiers[tier]["hit_ratio"] < 1
    assert tiers["redis"]["bytes_stored"] > 0 and tiers["redis"]["bytes_served"] > 0
    assert 0 < stages["encode"]["hit_ratio"] < 1 and 0 < stages["generate"]["hit_ratio"] < 1
    assert stages["encode"]["redis"]["waited"] >= 1
    text = cache_metrics(stack.rt)
    assert 'pixelmill_cache_events_total{stage="encode",tier="hot",kind="hits"}' in text


# --- 8. invalidation, limits, outage --------------------------------------------------------------

def test_a_tenant_clears_its_entries_and_only_its_own(stack: Stack) -> None:
    cache = redis.Redis.from_url(stack.cache_redis.url)
    before = sum(1 for _ in cache.scan_iter(match="pixelmill:cache:t*:latent:*"))
    response = stack.client.delete("/api/v1/cache")
    assert response.status_code == 200 and response.get_json()["deleted_keys"] > 0
    assert stack.client.get("/api/v1/cache").get_json()["entries"]["latent"] == 0
    assert sum(1 for _ in cache.scan_iter(match="pixelmill:cache:t*:latent:*")) == 1 < before  # acme's stays
    again = _run(stack, _png(photo("coins")), prompt="gold", seed=5)  # was served from cache before the clear
    assert _encode_cache(again)[0] is False and again["stages"]["generate"]["cached"] is False


def test_entries_over_the_size_limit_are_not_cached(stack: Stack) -> None:
    latents = redis.Redis.from_url(stack.cache_redis.url)
    before = sum(1 for _ in latents.scan_iter(match="*:latent:*"))
    job = _run(stack, _png(photo("grass", size=256)), size=576)
    cached, cache = _encode_cache(job)
    assert cached is False and "over the" in cache["note"] and str(MAX_ENTRY_BYTES) in cache["note"], cache
    assert stack.rt.store.fetch(job["id"]).outputs["latent"].split(":")[1].startswith("uncached-")
    assert sum(1 for _ in latents.scan_iter(match="*:latent:*")) == before  # nothing stored


def test_a_cache_outage_is_a_miss_never_a_failed_job(stack: Stack) -> None:
    stack.cache_redis.kill()
    job = _run(stack, _png(photo("gravel")))
    cached, cache = _encode_cache(job)
    assert cached is False and cache["note"] == "cache unavailable"
    assert job["stages"]["generate"]["cache"]["latent_tier"] in {"hot", "recomputed"}
    body = stack.client.get("/api/v1/cache")
    assert body.status_code == 200 and body.get_json()["available"] is False
    assert stack.client.delete("/api/v1/cache").status_code == 503
