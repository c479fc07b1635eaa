"""The latent cache against a real Redis, without a broker: tiers, near-duplicates, single-flight,
whole results, counters, TTLs on every key, scopes, clearing, limits and outages."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis
import torch

from cache.backend import Backend, build_client, stats_key
from cache.keys import EncoderSpec
from cache.policy import check_memory_policy
from cache.scopes import scope_for
from cache.service import CacheConfig, LatentCache
from cache.stats import prometheus_text
from tests.corpus import SAME, photos
from workers.diffusion import normalise_for_diffusion

SPEC = EncoderSpec(model="tiny", revision=None, dtype="fp32", size=128)
TENANT_A = scope_for(tenant="a", mode="tenant")
TENANT_B = scope_for(tenant="b", mode="tenant")


@pytest.fixture
def cache_redis(redis_server):
    """A database of the session's Redis of its own, emptied for each test."""
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/5")
    client.flushdb()
    yield client
    client.close()


def _cache(client: redis.Redis, **config) -> LatentCache:
    """A cache as one worker process has it (its own hot tier)."""
    return LatentCache(Backend(client), config=CacheConfig(**({"latent_ttl_s": 600, "result_ttl_s": 600,
                                                                "lock_ttl_s": 2.0} | config)))


class Encoder:
    """Counts the expensive encodes; a latent is the normalised image pooled by 8."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray):
        def compute() -> torch.Tensor:
            with self._lock:
                self.calls += 1
            time.sleep(self.delay_s)
            pooled = image.reshape(image.shape[0] // 8, 8, image.shape[1] // 8, 8, 3).mean(axis=(1, 3, 4))
            return torch.from_numpy(pooled).float()[None, None].repeat(1, 4, 1, 1)  # (1, 4, h/8, w/8)
        return compute


def _image(name: str = "coffee", variant: str | None = None) -> np.ndarray:
    image = photos()[name]
    if variant:
        image = SAME[variant](image)
    return normalise_for_diffusion(image, size=SPEC.size)


def _lookup(cache: LatentCache, image: np.ndarray, encoder: Encoder, scope=TENANT_A, **kw):
    return cache.fetch_or_compute(image, spec=SPEC, scope=scope, compute=encoder(image), **kw)


def test_miss_then_hot_then_redis_then_near_duplicate(cache_redis) -> None:
    encoder = Encoder()
    worker1, worker2 = _cache(cache_redis), _cache(cache_redis)
    first = _lookup(worker1, _image(), encoder)
    assert not first.cached and first.stored_bytes > 0 and encoder.calls == 1
    again = _lookup(worker1, _image(), encoder)
    assert again.cached and again.tier == "hot" and again.match == "exact" and again.ref == first.ref
    other_worker = _lookup(worker2, _image(), encoder)
    assert other_worker.cached and other_worker.tier == "redis" and other_worker.match == "exact"
    for variant in ("jpeg-q80", "webp-default", "resize-1"):
        near = _lookup(_cache(cache_redis), _image(variant=variant), encoder)
        assert near.cached and near.match == "near" and near.ref == first.ref, variant
        assert near.describe()["distance"] <= 6
    different = _lookup(worker2, _image("chelsea"), encoder)
    assert not different.cached and encoder.calls == 2


def test_generate_fetches_hot_first_then_redis(cache_redis) -> None:
    encoder = Encoder()
    worker1, worker2 = _cache(cache_redis), _cache(cache_redis)
    ref = _lookup(worker1, _image(), encoder).ref
    latent, tier = worker1.fetch_latent(ref, scope_token=TENANT_A.token)
    assert tier == "hot" and latent.shape[1] == 4
    latent2, tier2 = worker2.fetch_latent(ref, scope_token=TENANT_A.token)
    assert tier2 == "redis" and torch.equal(latent, latent2)
    assert worker2.fetch_latent(ref, scope_token=TENANT_A.token)[1] == "hot"
    assert worker2.fetch_latent(TENANT_A.token + ":" + "0" * 64, scope_token=TENANT_A.token) == (None, None)


def test_every_key_the_cache_writes_has_a_ttl(cache_redis) -> None:
    cache = _cache(cache_redis)
    encoder = Encoder()
    lock_ttls: list[int] = []

    def compute_and_look_at_the_lock():
        lock_ttls.extend(cache_redis.pttl(k) for k in cache_redis.scan_iter(match="*:lock:*"))
        return encoder(_image())()

    outcome = cache.fetch_or_compute(_image(), spec=SPEC, scope=TENANT_A, compute=compute_and_look_at_the_lock)
    _lookup(cache, _image(variant="jpeg-q80"), encoder)
    cache.save_result("r" * 64, scope_token=TENANT_A.token, generated="g" * 64 + ".png", job_id="j")
    cache.fetch_result("r" * 64, scope_token=TENANT_A.token, is_usable=lambda s: True)
    cache.fetch_latent(outcome.ref, scope_token=TENANT_A.token)
    cache.clear(TENANT_B)
    keys = list(cache_redis.scan_iter(match="*"))
    kinds = {k.decode().split(":")[3] if k.decode().count(":") >= 3 else k.decode() for k in keys}
    assert {"latent", "fp", "mih", "result"} <= kinds, kinds
    assert lock_ttls and all(t > 0 for t in lock_ttls)
    no_ttl = [k for k in keys if cache_redis.ttl(k) < 0]
    assert not no_ttl, f"cache keys without a TTL would never leave a noeviction Redis: {no_ttl}"
    assert all(k.startswith(b"pixelmill:cache:") for k in keys)


def test_two_workers_missing_at_once_compute_once(cache_redis) -> None:
    encoder = Encoder(delay_s=0.6)
    image = _image("astronaut")
    outcomes = []
    barrier = threading.Barrier(2)

    def worker() -> None:
        cache = _cache(cache_redis)
        barrier.wait()
        outcomes.append(_lookup(cache, image, encoder))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert encoder.calls == 1
    assert sorted(o.cached for o in outcomes) == [False, True]
    waited = next(o for o in outcomes if o.cached)
    assert waited.waited_s > 0.2 and waited.describe()["waited_s"] > 0 and waited.ref == outcomes[0].ref


def test_a_waiter_takes_over_when_the_holder_dies(cache_redis) -> None:
    cache = _cache(cache_redis)
    encoder = Encoder()
    image = _image("rocket")
    ref = cache.ref_for(image, spec=SPEC, scope=TENANT_B)
    cache_redis.set(cache.lock_key(ref), "a worker that died", px=500)  # holds the lock, will never store
    start = time.monotonic()
    outcome = cache.fetch_or_compute(image, spec=SPEC, scope=TENANT_B, compute=encoder(image))
    assert not outcome.cached and outcome.ref == ref and outcome.stored_bytes > 0 and encoder.calls == 1
    assert 0.3 < time.monotonic() - start < 5 and outcome.waited_s > 0.3


def test_a_waiter_gives_up_after_the_timeout(cache_redis) -> None:
    cache = _cache(cache_redis, singleflight_timeout_s=0.4)
    encoder = Encoder()
    image = _image("chelsea")
    cache_redis.set(cache.lock_key(cache.ref_for(image, spec=SPEC, scope=TENANT_A)), "stuck", px=60_000)
    start = time.monotonic()
    outcome = _lookup(cache, image, encoder)
    assert not outcome.cached and encoder.calls == 1 and 0.3 < time.monotonic() - start < 3


def test_whole_results_and_their_counters(cache_redis) -> None:
    cache = _cache(cache_redis)
    scope = TENANT_A.token
    assert cache.fetch_result("k" * 64, scope_token=scope, is_usable=lambda s: True) is None
    assert cache.save_result("k" * 64, scope_token=scope, generated="a" * 64 + ".png", job_id="j1")
    found = cache.fetch_result("k" * 64, scope_token=scope, is_usable=lambda s: True)
    assert found.generated == "a" * 64 + ".png" and found.job_id == "j1"
    assert cache.fetch_result("k" * 64, scope_token=TENANT_B.token, is_usable=lambda s: True) is None
    # a result whose image is gone is a miss, and is forgotten
    assert cache.fetch_result("k" * 64, scope_token=scope, is_usable=lambda s: False) is None
    assert cache.results.fetch(token=scope, key="k" * 64) is None

    snapshot = cache.stats.snapshot(scope)
    assert snapshot["available"]
    results = snapshot["tiers"]["results"]
    assert results["hits"] == 1 and results["misses"] == 2 and results["hit_ratio"] == pytest.approx(1 / 3, abs=1e-3)
    assert snapshot["stages"]["generate"]["hit_ratio"] == pytest.approx(1 / 3, abs=1e-3)


def test_counters_per_tier_and_stage_with_bytes(cache_redis) -> None:
    cache = _cache(cache_redis)
    encoder = Encoder()
    ref = _lookup(cache, _image(), encoder).ref              # encode: miss, stored
    _lookup(cache, _image(), encoder)                       # encode: hot hit
    _lookup(_cache(cache_redis), _image(), encoder)         # encode: redis hit
    _cache(cache_redis).fetch_latent(ref, scope_token=TENANT_A.token)  # generate: hot miss, redis hit
    s = cache.stats.snapshot(TENANT_A.token)
    encode = s["stages"]["encode"]
    assert encode["hot"]["hits"] == 1 and encode["hot"]["misses"] == 2
    assert encode["redis"]["hits"] == 1 and encode["redis"]["misses"] == 1 and encode["redis"]["bytes_stored"] > 0
    assert encode["hit_ratio"] == pytest.approx(2 / 3, abs=1e-3)
    generate = s["stages"]["generate"]
    assert generate["redis"]["hits"] == 1 and generate["redis"]["bytes_served"] > 0
    assert s["tiers"]["hot"]["hits"] == 1 and s["tiers"]["redis"]["hits"] == 2
    assert cache.stats.snapshot()["tiers"]["redis"]["hits"] >= 2  # the all-scopes counters too
    text = prometheus_text(cache.stats.snapshot())
    assert 'pixelmill_cache_events_total{stage="encode",tier="hot",kind="hits"} 1' in text
    assert 'pixelmill_cache_hit_ratio{tier="redis"}' in text and "pixelmill_cache_up 1" in text


def test_scopes_are_per_tenant_unless_shared(cache_redis) -> None:
    encoder = Encoder()
    cache = _cache(cache_redis)
    _lookup(cache, _image(), encoder, scope=TENANT_A)
    assert not _lookup(cache, _image(), encoder, scope=TENANT_B).cached  # B never sees A's upload
    assert encoder.calls == 2
    shared_a, shared_b = scope_for(tenant="a", mode="shared"), scope_for(tenant="b", mode="shared")
    assert shared_a == shared_b and shared_a.is_shared
    _lookup(cache, _image("chelsea"), encoder, scope=shared_a)
    assert _lookup(_cache(cache_redis), _image("chelsea"), encoder, scope=shared_b).cached
    assert TENANT_A.token != TENANT_B.token and ":" not in TENANT_A.token
    with pytest.raises(ValueError, match="PIXELMILL_CACHE_SCOPE"):
        scope_for(tenant="a", mode="everyone")


def test_clearing_a_tenant_forgets_its_entries_in_every_tier(cache_redis) -> None:
    encoder = Encoder()
    worker = _cache(cache_redis)
    _lookup(worker, _image(), encoder, scope=TENANT_A)
    _lookup(worker, _image(), encoder, scope=TENANT_B)
    assert worker.entries(TENANT_A) == {"latent": 1, "result": 0, "prompt": 0, "control": 0}
    other_worker = _cache(cache_redis)  # its hot tier is not cleared by the web process…
    other_worker.fetch_latent(_lookup(worker, _image(), encoder, scope=TENANT_A).ref, scope_token=TENANT_A.token)
    assert _cache(cache_redis).clear(TENANT_A) > 0
    assert worker.entries(TENANT_A)["latent"] == 0 and worker.entries(TENANT_B)["latent"] == 1
    again = _lookup(other_worker, _image(), encoder, scope=TENANT_A)  # …but a new generation misses it
    assert not again.cached and encoder.calls == 3
    assert _lookup(other_worker, _image(), encoder, scope=TENANT_B).cached


def test_entries_over_the_limit_are_not_cached(cache_redis) -> None:
    encoder = Encoder()
    cache = _cache(cache_redis, max_entry_bytes=256)
    image = _image()
    outcome = cache.fetch_or_compute(image, spec=SPEC, scope=TENANT_A, compute=encoder(image))
    assert not outcome.cached and outcome.stored_bytes == 0 and "not cached" in outcome.note
    assert not list(cache_redis.scan_iter(match="*:latent:*"))
    assert cache.fetch_latent(outcome.ref, scope_token=TENANT_A.token)[1] == "hot"  # this job's generate, here
    early = cache.fetch_or_compute(image, spec=SPEC, scope=TENANT_A, compute=encoder(image), expected_bytes=10_000)
    assert not early.cached and "over the 256-byte limit" in early.note and encoder.calls == 2
    assert cache.stats.snapshot(TENANT_A.token)["stages"]["encode"]["redis"]["too_large"] >= 1


def test_a_redis_outage_is_a_miss_never_an_error() -> None:
    cache = LatentCache(Backend(build_client("redis://127.0.0.1:1/0")), config=CacheConfig())
    encoder = Encoder()
    start = time.monotonic()
    outcome = _lookup(cache, _image(), encoder)
    assert not outcome.cached and outcome.note == "cache unavailable" and encoder.calls == 1
    assert cache.fetch_latent(outcome.ref, scope_token=TENANT_A.token)[1] == "hot"  # this process still has it
    assert cache.fetch_latent("t:" + "0" * 64, scope_token=TENANT_A.token) == (None, None)
    assert cache.fetch_result("k", scope_token="t", is_usable=lambda s: True) is None
    assert not cache.save_result("k", scope_token="t", generated="g", job_id="j")
    assert cache.clear(TENANT_A) is None and cache.entries(TENANT_A) == dict.fromkeys(("latent", "result", "prompt", "control"))
    assert cache.stats.snapshot()["available"] is False
    assert time.monotonic() - start < 2  # one failed connect, then the breaker answers at once


def test_memory_policy_check(tmp_path, redis_server) -> None:
    from stack.redis_server import RedisServer

    shared = Backend(redis.Redis.from_url(redis_server.url))
    assert check_memory_policy(shared, shared_with_broker=True).to_dict()["ok"]  # the embedded one: noeviction
    lru = RedisServer(data_dir=tmp_path, appendonly=False, maxmemory_policy="allkeys-lru", maxmemory="16mb").start()
    try:
        separate = Backend(redis.Redis.from_url(lru.url))
        assert check_memory_policy(separate, shared_with_broker=False).problems == ()
        problems = check_memory_policy(separate, shared_with_broker=True).problems
        assert problems and "noeviction" in problems[0] and "PIXELMILL_CACHE_REDIS_URL" in problems[0]
    finally:
        lru.stop()
    assert stats_key() == "pixelmill:cache:stats"
