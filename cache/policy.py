"""Redis memory policy: queues must never be evicted.

Celery's Redis broker keeps its queues (lists named after the queues) and its unacked
bookkeeping with no TTL; job records carry a TTL. So:

* the instance that holds the broker (and the job store) runs ``noeviction`` — ``allkeys-*``
  could evict a queue, and ``volatile-*`` would evict job records, which have TTLs too;
  cache entries there expire by their own TTLs (every cache key has one);
* a separate cache instance (``cache_redis_url``) should run ``allkeys-lru`` with a
  ``maxmemory``, so that a full cache evicts old entries instead of refusing new ones.

``check_memory_policy`` says what is wrong with a deployment, in words an operator can act on.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from cache.backend import Backend


@dataclass(frozen=True)
class PolicyReport:
    policy: str | None       # maxmemory-policy, None when it could not be read
    maxmemory: int | None
    shared_with_broker: bool
    problems: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"policy": self.policy, "maxmemory": self.maxmemory, "shared_with_broker": self.shared_with_broker,
                "ok": not self.problems, "problems": list(self.problems)}


def read_policy(backend: Backend) -> tuple[str | None, int | None]:
    def read(r: redis.Redis) -> tuple[str | None, int | None]:
        try:
            config = r.config_get("maxmemory*")
        except redis.ResponseError:  # CONFIG is often disabled on managed Redis
            return None, None
        policy = config.get("maxmemory-policy")
        maxmemory = config.get("maxmemory")
        return policy, int(maxmemory) if maxmemory is not None else None

    return backend.call("config get", read, (None, None))


def check_memory_policy(backend: Backend, *, shared_with_broker: bool) -> PolicyReport:
    policy, maxmemory = read_policy(backend)
    problems: list[str] = []
    if policy is None:
        pass  # unknown: nothing to say
    elif shared_with_broker and policy != "noeviction":
        problems.append(
            f"the Redis that holds the queues and job records runs maxmemory-policy {policy}: it may evict a "
            "queue (allkeys-*) or job records (volatile-*). Set it to noeviction, and give the cache its own "
            "instance (PIXELMILL_CACHE_REDIS_URL) with allkeys-lru")
    elif not shared_with_broker and policy != "allkeys-lru":
        problems.append(
            f"the cache's own Redis runs maxmemory-policy {policy}; allkeys-lru (with a maxmemory) lets a full "
            "cache evict old entries instead of refusing new ones")
    if not shared_with_broker and policy is not None and not maxmemory:
        problems.append("the cache's own Redis has no maxmemory: it will grow until the machine runs out")
    return PolicyReport(policy=policy, maxmemory=maxmemory, shared_with_broker=shared_with_broker,
                        problems=tuple(problems))
