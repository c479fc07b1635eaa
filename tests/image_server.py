"""A small HTTP(S) server on loopback for tests that fetch images by URL: routes answer as told
(a body, a redirect, a huge or slow stream), and a self-signed certificate for ``localhost``
made here with the ``openssl`` command line."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

Route = Callable[["http.server.BaseHTTPRequestHandler"], None]


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate (EC P-256) for localhost and 127.0.0.1: (cert, key)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def body(data: bytes, *, content_type: str = "image/png", status: int = 200) -> Route:
    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return answer


def redirect(location: str, status: int = 302) -> Route:
    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return answer


def endless(*, declare: int | None = None, chunk: int = 64 * 1024, total: int = 50 * 1024 * 1024) -> Route:
    """``total`` bytes of zeros (50 MB), with or without a Content-Length; stops when the client goes."""
    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        if declare is not None:
            h.send_header("Content-Length", str(declare))
        h.end_headers()
        sent = 0
        try:
            while sent < total:
                h.wfile.write(b"\0" * chunk)
                sent += chunk
        except OSError:
            pass  # the client stopped reading: that is the point
        h.server.sent[h.path] = sent  # type: ignore[attr-defined]
        h.close_connection = True
    return answer


def slow(seconds: float) -> Route:
    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        body(b"late")(h)
    return answer


@dataclass
class ImageServer:
    """Serves ``routes`` (path → answer) on 127.0.0.1, over TLS when given a (cert, key)."""

    routes: dict[str, Route] = field(default_factory=dict)
    tls: tuple[Path, Path] | None = None
    hits: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                server.hits.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    body(b"no such image", content_type="text/plain", status=404)(self)
                else:
                    route(self)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.sent = {}  # type: ignore[attr-defined]
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str, *, host: str = "localhost") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    @property
    def sent(self) -> dict[str, int]:
        return self.httpd.sent  # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(routes: dict[str, Route], *, tls: tuple[Path, Path] | None = None) -> Iterator[ImageServer]:
    server = ImageServer(routes=routes, tls=tls)
    try:
        yield server
    finally:
        server.close()
