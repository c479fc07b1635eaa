"""The fan-out hub of live updates: one Redis subscription per web process, shared by every
viewer of the Server-Sent Events (web/live.py). What it hears is published by the job store
(tasks.live); here only the web listens.

Pub/sub is fire-and-forget: a web process that was disconnected misses messages. The hub
resubscribes after a reconnect and tells its viewers to re-read the job, and viewers re-read
on their keepalive tick too, so a missed message only delays an update.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)


RESYNC: dict[str, Any] = {"type": "resync"}  # to a viewer: messages may have been missed, re-read the job


def pubsub_client(url: str) -> redis.Redis:
    """A client for the hub's one subscription: no silent retries (the hub reconnects and then
    resubscribes itself), a health-check PING so a dead connection is noticed while idle."""
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), health_check_interval=10,
                                socket_connect_timeout=5, socket_timeout=10, socket_keepalive=True)


class Viewer:
    """One viewer's queue of messages from the hub. A viewer too slow to keep up loses the
    queued messages and gets ``RESYNC`` instead (re-read the current state)."""

    def __init__(self, hub: "LiveHub", channels: tuple[str, ...], *, maxsize: int) -> None:
        self.hub = hub
        self.channels = channels
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=maxsize)
        self._lagged = False
        self._closed = False

    def offer(self, message: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self._lagged = True

    def resync(self) -> None:
        self._lagged = True
        try:
            self._queue.put_nowait(RESYNC)  # wakes a viewer blocked in get()
        except queue.Full:
            pass

    def get(self, timeout: float) -> dict[str, Any] | None:
        """The next message, ``RESYNC``, or None when nothing came within ``timeout`` seconds."""
        if not self._lagged:
            try:
                message = self._queue.get(timeout=timeout)
            except queue.Empty:
                return None
            if message is not RESYNC and not self._lagged:
                return message
        self._lagged = False
        while True:  # what is queued is older than the state re-read now
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return RESYNC

    def wait_ready(self, timeout: float) -> bool:
        """Until the hub's subscription to every channel of this viewer is confirmed by Redis."""
        return self.hub.wait_subscribed(self.channels, timeout)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.hub.release(self)

    def __enter__(self) -> "Viewer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LiveHub:
    """One pub/sub connection and one thread per process, fanned out to per-viewer queues.

    Channels are subscribed while at least one viewer watches them. When the connection
    drops (Redis restarts, a network blip) the thread reconnects with backoff, subscribes
    every watched channel again and sends ``RESYNC`` to their viewers once confirmed.
    """

    def __init__(self, client: redis.Redis, *, queue_size: int = 256, backoff_max_s: float = 5.0) -> None:
        self.client = client
        self.queue_size = queue_size
        self.backoff_max_s = backoff_max_s
        self._lock = threading.Condition()
        self._viewers: dict[str, set[Viewer]] = {}
        self._confirmed: set[str] = set()
        self._resync: set[str] = set()
        self._pubsub: redis.client.PubSub | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.reconnects = 0

    # viewers --------------------------------------------------------------------------------
    def watch(self, channels: Iterable[str]) -> Viewer:
        viewer = Viewer(self, tuple(dict.fromkeys(channels)), maxsize=self.queue_size)
        with self._lock:
            self._start()
            new = []
            for channel in viewer.channels:
                members = self._viewers.setdefault(channel, set())
                if not members:
                    new.append(channel)
                members.add(viewer)
            if new and self._pubsub is not None:
                self._send(self._pubsub, "subscribe", new)
        return viewer

    def release(self, viewer: Viewer) -> None:
        with self._lock:
            gone = []
            for channel in viewer.channels:
                members = self._viewers.get(channel)
                if members is None:
                    continue
                members.discard(viewer)
                if not members:
                    del self._viewers[channel]
                    self._confirmed.discard(channel)
                    self._resync.discard(channel)
                    gone.append(channel)
            if gone and self._pubsub is not None:
                self._send(self._pubsub, "unsubscribe", gone)

    def wait_subscribed(self, channels: Iterable[str], timeout: float) -> bool:
        wanted = set(channels)
        with self._lock:
            return self._lock.wait_for(lambda: wanted <= self._confirmed, timeout=timeout)

    def viewer_count(self) -> int:
        with self._lock:
            return len({viewer for members in self._viewers.values() for viewer in members})

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # the subscriber thread --------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="pixelmill-live-hub", daemon=True)
            self._thread.start()

    def _send(self, pubsub: redis.client.PubSub, command: str, channels: list[str]) -> None:
        """(Un)subscribe from a viewer's thread (redis-py locks the send; only the hub reads).
        On failure the connection is dropped and the hub thread subscribes everything again."""
        try:
            getattr(pubsub, command)(*channels)
        except (redis.RedisError, OSError) as e:
            log.warning("live: %s failed (%s); reconnecting", command, e)
            self._drop(pubsub)

    def _run(self) -> None:
        backoff = 0.1
        connected_before = False
        while not self._stopped.is_set():
            pubsub = self._pubsub
            try:
                if pubsub is None:
                    pubsub = self._connect(reconnect=connected_before)
                    connected_before = True
                message = pubsub.get_message(timeout=1.0)
                backoff = 0.1
            except Exception as e:  # noqa: BLE001 - the hub must outlive any failure: reconnect
                log.warning("live: pub/sub connection lost (%s: %s); reconnecting in %.1f s",
                            type(e).__name__, e, backoff)
                self._drop(pubsub)
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            if message is not None:
                self._dispatch(message)
        self._drop(self._pubsub)

    def _connect(self, *, reconnect: bool) -> redis.client.PubSub:
        """A new subscription to every watched channel (connecting outside the lock, so that
        viewers never wait on a connect timeout while Redis is down). After a reconnect their
        viewers re-read the current state once it is confirmed: what was published meanwhile is lost."""
        with self._lock:
            channels = set(self._viewers)
        pubsub = self.client.pubsub()
        if channels:
            pubsub.subscribe(*channels)  # connects: raises here while Redis is down
        with self._lock:
            self._pubsub = pubsub
            if reconnect:  # a first connect missed nothing: its viewers wait for it before reading
                self.reconnects += 1
                self._resync.update(channels)
            added, removed = set(self._viewers) - channels, channels - set(self._viewers)
            if added:
                self._send(pubsub, "subscribe", sorted(added))
            if removed:
                self._send(pubsub, "unsubscribe", sorted(removed))
        return pubsub

    def _drop(self, pubsub: redis.client.PubSub | None) -> None:
        if pubsub is None:
            return
        with self._lock:
            if self._pubsub is pubsub:
                self._pubsub = None
                self._confirmed.clear()
        try:
            pubsub.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail in any way
            pass

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
        if kind == "message":
            try:
                data = json.loads(message["data"])
            except ValueError:
                log.warning("live: dropped a malformed message on %s", channel)
                return
            with self._lock:
                viewers = list(self._viewers.get(channel, ()))
            for viewer in viewers:
                viewer.offer(data)
        elif kind == "subscribe":
            with self._lock:
                if channel in self._viewers:
                    self._confirmed.add(channel)
                    self._lock.notify_all()
                    if channel in self._resync:
                        self._resync.discard(channel)
                        for viewer in self._viewers[channel]:
                            viewer.resync()
        elif kind == "unsubscribe":
            with self._lock:
                if channel not in self._viewers:
                    self._confirmed.discard(channel)
