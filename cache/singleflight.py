"""Single-flight: when several workers miss on the same key at once, one computes and the others
wait for its result.

The lock is ``SET key token NX PX ttl``. Its holder refreshes it while it computes (a heartbeat
thread), stores the value, then releases the lock — only if the token is still its own (a Lua
compare-and-delete). A waiter polls for the value; when the lock vanishes without a value (the
holder died, or its value could not be stored) the waiter takes the lock and computes itself;
after ``timeout_s`` it stops waiting and computes without the lock. A Redis fault means no
coordination: everyone computes, nothing fails.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import redis

from cache.backend import Backend

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_REFRESH = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
            "else return 0 end")


@dataclass(frozen=True)
class Flight(Generic[T, R]):
    value: T | None      # what compute() returned, when this caller computed
    found: R | None      # what ready() returned, when someone else's result was used
    computed: bool
    waited_s: float      # time spent waiting for another worker (0 when it did not wait)

    @property
    def waited(self) -> bool:
        return self.waited_s > 0 and not self.computed


class SingleFlight:
    def __init__(self, backend: Backend, *, timeout_s: float, lock_ttl_s: float = 30.0, poll_s: float = 0.05) -> None:
        if timeout_s <= 0 or lock_ttl_s <= 0:
            raise ValueError("single-flight timeout and lock TTL must be positive (PIXELMILL_SINGLEFLIGHT_TIMEOUT_S)")
        self.backend = backend
        self.timeout_s = timeout_s
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self.poll_s = poll_s

    def run(self, lock_key: str, *, compute: Callable[[], T], ready: Callable[[], R | None]) -> Flight[T, R]:
        """``compute()`` once across workers for ``lock_key``; others get ``ready()``'s answer.

        ``ready()`` says whether the value is available now (truthy = use it). ``compute()`` must
        store its value where ``ready()`` finds it before returning.
        """
        start = time.monotonic()
        deadline = start + self.timeout_s
        waited = False
        while True:
            token = self._acquire(lock_key)
            if token is not None:
                try:
                    if waited:  # the holder may have finished between our last poll and the lock
                        found = ready()
                        if found:
                            return Flight(None, found, False, time.monotonic() - start)
                    with self._heartbeat(lock_key, token):
                        value = compute()
                    return Flight(value, None, True, time.monotonic() - start if waited else 0.0)
                finally:
                    self._release(lock_key, token)
            if token is None and not self.backend.is_available():
                return Flight(compute(), None, True, 0.0)  # no Redis, no coordination
            waited = True
            while time.monotonic() < deadline and self._held(lock_key):
                found = ready()
                if found:
                    return Flight(None, found, False, time.monotonic() - start)
                time.sleep(self.poll_s)
            found = ready()
            if found:
                return Flight(None, found, False, time.monotonic() - start)
            if time.monotonic() >= deadline:
                log.warning("waited %.0f s for another worker to compute %s; computing it here", self.timeout_s, lock_key)
                return Flight(compute(), None, True, time.monotonic() - start)
            # the lock is gone and no value: the holder died or could not store it — take over

    def _acquire(self, lock_key: str) -> str | None:
        token = secrets.token_hex(16)
        ok = self.backend.call("lock", lambda r: r.set(lock_key, token, nx=True, px=self.lock_ttl_ms), None)
        return token if ok else None

    def _held(self, lock_key: str) -> bool:
        return bool(self.backend.call("lock check", lambda r: r.exists(lock_key), 0))

    def _release(self, lock_key: str, token: str) -> None:
        self.backend.call("unlock", lambda r: r.eval(_RELEASE, 1, lock_key, token), None)

    @contextmanager
    def _heartbeat(self, lock_key: str, token: str) -> Iterator[None]:
        """Keep the lock alive while this process computes (a third of the TTL between refreshes)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lock_ttl_ms / 3000):
                try:
                    self.backend.client.eval(_REFRESH, 1, lock_key, token, self.lock_ttl_ms)
                except redis.RedisError as e:
                    log.debug("could not refresh lock %s: %s", lock_key, e)

        thread = threading.Thread(target=beat, name=f"singleflight-{lock_key[-8:]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=1)
