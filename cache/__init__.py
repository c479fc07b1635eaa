"""The latent cache (docs/cache.md): content keys that see what an image looks like, an
in-worker hot tier, latents and a near-duplicate index on Redis, single-flight, whole results,
per-tenant scopes and counters. Imports nothing of pixelmill's outside this package.

Modules: keys (signatures), fingerprint (pHash + thumbnails, the hit decision), hot (LRU in
bytes), latents (Redis latent store), index (multi-index hashing), singleflight, results,
stats, scopes, policy (Redis memory policy), backend (faults become misses), service (what the
stages call).
"""
