"""The cache's Redis: one key prefix, a TTL on every key it writes, and faults that make the
cache a miss — never a failed job.

After a Redis error the backend stays *open* (every call answers its default at once) for
``cooldown_s``, so a cache instance that is down or hanging costs a job one timeout, not one
per lookup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

PREFIX = "pixelmill:cache"
T = TypeVar("T")


def cache_key(scope_token: str, kind: str, *parts: str) -> str:
    """Every Redis key of a scope's cache entries: ``pixelmill:cache:<scope>:<kind>:<parts…>``.

    All of a scope's entries share the prefix ``pixelmill:cache:<scope>:``, which is how a
    tenant's entries are found and cleared.
    """
    return ":".join((PREFIX, scope_token, kind, *parts))


def stats_key(scope_token: str | None = None) -> str:
    """The counters: ``pixelmill:cache:stats`` (all scopes) and ``pixelmill:cache:stats:<scope>``."""
    return f"{PREFIX}:stats" if scope_token is None else f"{PREFIX}:stats:{scope_token}"


@dataclass
class Backend:
    """A Redis client whose faults become defaults."""

    client: redis.Redis
    cooldown_s: float = 5.0
    _open_until: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def is_available(self) -> bool:
        return time.monotonic() >= self._open_until

    def call(self, what: str, fn: Callable[[redis.Redis], T], default: T) -> T:
        """``fn(client)``, or ``default`` when Redis fails (or failed less than ``cooldown_s`` ago)."""
        if not self.is_available():
            return default
        try:
            return fn(self.client)
        except redis.RedisError as e:
            with self._lock:
                first = self.is_available()
                self._open_until = time.monotonic() + self.cooldown_s
            if first:
                log.warning("latent cache unavailable (%s: %s); treating lookups as misses for %.0f s",
                            what, e, self.cooldown_s)
            return default


def build_client(url: str) -> redis.Redis:
    """A client with short timeouts and one quick retry: a cache that is slow to answer is a miss,
    not a wait (redis-py's default retries back off for seconds)."""
    return redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=30,
                                retry=Retry(NoBackoff(), 1))
