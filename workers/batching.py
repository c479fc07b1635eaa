"""A dynamic batcher, in the manner of Triton's: requests that can share one call are run as one
batch of at most ``max_batch``, and the oldest waiting request waits at most ``max_wait_s``.

Free of Celery and torch: callers submit items from their own threads and block on the returned
Future; one batcher thread groups items by ``key`` and calls ``run(items) -> results``. If a batch
fails, each of its items is run again alone, so one bad item fails only itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Batched(Generic[R]):
    """One item's result, with the batch it ran in: how many shared the call and how long it took."""

    value: R
    batch_size: int
    seconds: float

    @property
    def share_s(self) -> float:
        """This item's share of the device time of its batch."""
        return self.seconds / self.batch_size


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    key: Hashable
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[T, R]):
    """Group compatible items into batches; see the module docstring.

    ``expected()``, when given, says how many more items are on their way (for a Celery worker:
    generate requests it has already taken from the broker that have not reached the batcher).
    When it says none, a batch goes at once instead of waiting out ``max_wait_s`` for company
    that cannot come — a quiet queue pays no batching delay.
    """

    def __init__(self, run: Callable[[list[T]], list[R]], *, key: Callable[[T], Hashable], max_batch: int,
                 max_wait_s: float, expected: Callable[[], int] | None = None, name: str = "batcher") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        self._run = run
        self._key = key
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._expected = expected
        self._waiting: list[_Waiting[T, R]] = []
        self._running = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        """Items waiting or running now."""
        with self._cond:
            return len(self._waiting) + self._running

    def submit(self, item: T) -> Future[Batched[R]]:
        """Queue ``item``; the Future gives its Batched result, or raises what running it raised."""
        waiting: _Waiting[T, R] = _Waiting(item=item, key=self._key(item))
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(waiting)
            self._cond.notify_all()
        return waiting.future

    def run(self, item: T) -> Batched[R]:
        """Submit ``item`` and wait for its result."""
        return self.submit(item).result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # --- the batcher thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            finally:
                with self._cond:
                    self._running -= len(batch)

    def _next_batch(self) -> list[_Waiting[T, R]] | None:
        """Block until a batch is due: full, or its oldest item has waited max_wait_s, or no
        more items are expected. The oldest item's key picks the batch (first come, first served)."""
        with self._cond:
            while not self._waiting:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._waiting[0]
            deadline = first.arrived + self.max_wait_s
            while True:
                same = [w for w in self._waiting if w.key == first.key]
                remaining = deadline - time.monotonic()
                if len(same) >= self.max_batch or remaining <= 0 or self._closed or not self._more_expected():
                    break
                self._cond.wait(min(remaining, 0.005) if self._expected else remaining)
            batch = same[: self.max_batch]
            taken = {id(w) for w in batch}
            self._waiting = [w for w in self._waiting if id(w) not in taken]
            self._running += len(batch)
            return batch

    def _more_expected(self) -> bool:
        if self._expected is None:
            return True
        try:
            return self._expected() > 0
        except Exception:  # noqa: BLE001 — a broken hint must not stop batching
            log.exception("batcher: expected() failed; waiting out max_wait")
            return True

    def _run_batch(self, batch: list[_Waiting[T, R]]) -> None:
        live = [w for w in batch if w.future.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.monotonic()
        try:
            results = self._run([w.item for w in live])
            if len(results) != len(live):
                raise RuntimeError(f"run() returned {len(results)} results for {len(live)} items")
        except BaseException as e:  # noqa: BLE001 — handed to the callers, never lost
            if len(live) == 1:
                live[0].future.set_exception(e)
                return
            log.warning("batch of %d failed (%s: %s); running its items one by one", len(live), type(e).__name__, e)
            for w in live:
                self._run_alone(w)
            return
        seconds = time.monotonic() - started
        for w, value in zip(live, results, strict=True):
            w.future.set_result(Batched(value=value, batch_size=len(live), seconds=seconds))

    def _run_alone(self, w: _Waiting[T, R]) -> None:
        started = time.monotonic()
        try:
            (value,) = self._run([w.item])
        except BaseException as e:  # noqa: BLE001
            w.future.set_exception(e)
        else:
            w.future.set_result(Batched(value=value, batch_size=1, seconds=time.monotonic() - started))
