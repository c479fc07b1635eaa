"""Fetching an input image by URL, through the outbound guard (``safety.outbound``).

The rules are the webhooks' (docs/api.md): the URL is parsed and its host resolved, and every
private, loopback, link-local, multicast, reserved or otherwise non-global address is refused
unless ``allow_private``; the connection goes to exactly the addresses that were checked (no
second resolution, so DNS rebinding cannot swap one in), with SNI and certificate checks for the
name in the URL. On top of that, for inputs:

- https only (a redirect to http is refused too), no credentials in the URL;
- at most ``MAX_REDIRECTS`` redirects, each target checked like the first URL;
- the body is read in chunks up to ``max_bytes`` (a larger ``Content-Length`` is refused before
  any byte is read; a body without one is cut off at the cap), all hops within ``timeout_s``.

What comes back is bytes only: whether they are an image (format, pixel limits, decompression
bombs) is ``safety.validate``'s to decide, as for an upload. A failure is a ``FetchFailed`` with
the code the job fails with: ``input_unreachable`` or ``input_too_large``.

Nothing here imports the rest of pixelmill.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from urllib.parse import urljoin, urlsplit

from safety.errors import SafetyError
from safety.outbound import (MAX_URL_LENGTH, CheckedTarget, NotConnected, OutboundRefused, Resolver,
                             UnresolvableHost, _set_timeout, check_url, connect_first)

MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "pixelmill-fetch/1"
INPUT_PRIVATE_HINT = ("input images are fetched from public addresses only (set PIXELMILL_INPUT_ALLOW_PRIVATE=1 "
                      "to allow private ones on a trusted network)")
_CHUNK = 64 * 1024

Check = Callable[[str], CheckedTarget]


class FetchFailed(SafetyError):
    """The image could not be fetched; ``code`` is what the job fails with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Fetched:
    url: str  # the URL the bytes came from (after redirects)
    data: bytes
    content_type: str | None
    redirects: tuple[str, ...] = ()  # every URL that answered with a redirect, in order


def check_input_url(url: str, *, allow_private: bool, resolve: Resolver | None = None) -> CheckedTarget:
    """An input URL as the guard sees it: https, no credentials, a host whose every address is
    allowed. Raises ``OutboundRefused`` (``UnresolvableHost`` when the name does not resolve)."""
    if not isinstance(url, str) or not url.strip():
        raise OutboundRefused("the image URL is empty")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise OutboundRefused(f"the image URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise OutboundRefused(f"{url[:200]!r} is not a valid URL: {e}") from e
    if parts.scheme.lower() != "https":
        raise OutboundRefused(f"{url[:200]!r}: input images are fetched over https only")
    if "@" in parts.netloc:
        raise OutboundRefused(f"{url[:200]!r}: credentials in the URL are not supported; use a URL that "
                              "needs none (a pre-signed one, for instance)")
    return check_url(url, allow_private=allow_private, resolve=resolve, private_hint=INPUT_PRIVATE_HINT)


def fetch(url: str, *, allow_private: bool, max_bytes: int, timeout_s: float, max_redirects: int = MAX_REDIRECTS,
          resolve: Resolver | None = None, ssl_context: ssl.SSLContext | None = None,
          check: Check | None = None) -> Fetched:
    """GET ``url`` under the guard (see the module's notes); raise ``FetchFailed``.

    ``check`` replaces the guard of each hop (tests); ``ssl_context`` the default one, which
    verifies certificates against the system's trust store.
    """
    check = check or partial(check_input_url, allow_private=allow_private, resolve=resolve)
    deadline = time.monotonic() + timeout_s
    redirects: list[str] = []
    current = url
    while True:
        try:
            target = check(current)
        except UnresolvableHost as e:
            raise FetchFailed("input_unreachable", _after(redirects, str(e))) from e
        except OutboundRefused as e:
            raise FetchFailed("input_unreachable", _after(redirects, str(e))) from e
        status, headers, data = _get(target, deadline=deadline, timeout_s=timeout_s, max_bytes=max_bytes,
                                     ssl_context=ssl_context)
        if status in REDIRECTS:
            location = headers.get("location")
            if not location:
                raise FetchFailed("input_unreachable", f"{_short(current)} answered {status} without a Location")
            if len(redirects) >= max_redirects:
                raise FetchFailed("input_unreachable", f"{_short(url)} redirected more than {max_redirects} times; "
                                                       "give the image's final URL")
            redirects.append(current)
            current = urljoin(current, location.strip())
            continue
        if not 200 <= status < 300:
            raise FetchFailed("input_unreachable", _after(redirects, f"{_short(current)} answered HTTP {status}"))
        return Fetched(url=current, data=data, content_type=headers.get("content-type"),
                       redirects=tuple(redirects))


def _get(target: CheckedTarget, *, deadline: float, timeout_s: float, max_bytes: int,
         ssl_context: ssl.SSLContext | None) -> tuple[int, dict[str, str], bytes]:
    """One GET to the checked addresses (the first that accepts the connection). A redirect's body
    is not read; any other body is read up to ``max_bytes``."""
    conn: http.client.HTTPConnection | None = None
    try:
        conn, _ = connect_first(target, deadline=deadline, ssl_context=ssl_context, tls_errors_end=True)
        conn.request("GET", target.path, headers={
            "Host": target.host_header, "User-Agent": USER_AGENT, "Accept-Encoding": "identity",
            "Accept": "image/png, image/jpeg, image/webp, */*;q=0.5", "Connection": "close"})
        _set_timeout(conn, deadline)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        if response.status in REDIRECTS or not 200 <= response.status < 300:
            return response.status, headers, b""
        return response.status, headers, _read_capped(conn, response, target=target, max_bytes=max_bytes,
                                                      deadline=deadline)
    except FetchFailed:
        raise
    except NotConnected as e:
        if e.last_error is None:
            raise FetchFailed("input_unreachable", f"no answer from {target.host_header} within {timeout_s:g} s") from e
        raise FetchFailed("input_unreachable", f"could not connect to {target.host_header}: {e.last_error}") from e
    except (socket.timeout, TimeoutError) as e:
        raise FetchFailed("input_unreachable", f"no answer from {target.host_header} within {timeout_s:g} s "
                                               "(PIXELMILL_INPUT_FETCH_TIMEOUT_S)") from e
    except ssl.SSLError as e:
        raise FetchFailed("input_unreachable", f"TLS with {target.host_header} failed: {e}") from e
    except (http.client.HTTPException, OSError) as e:
        raise FetchFailed("input_unreachable", f"{target.host_header}: {type(e).__name__}: {e}") from e
    finally:
        if conn is not None:
            conn.close()


def _read_capped(conn: http.client.HTTPConnection, response: http.client.HTTPResponse, *, target: CheckedTarget,
                 max_bytes: int, deadline: float) -> bytes:
    declared = response.getheader("content-length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise FetchFailed("input_too_large", f"{_short(target.url)} is {int(declared)} bytes; an input image may "
                                             f"be at most {max_bytes} bytes (PIXELMILL_MAX_UPLOAD_BYTES)")
    chunks: list[bytes] = []
    size = 0
    while True:
        _set_timeout(conn, deadline)
        chunk = response.read1(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise FetchFailed("input_too_large", f"{_short(target.url)} sent more than {max_bytes} bytes; an input "
                                                 "image may be at most that (PIXELMILL_MAX_UPLOAD_BYTES)")
        chunks.append(chunk)


def _after(redirects: list[str], message: str) -> str:
    if not redirects:
        return message
    return f"after {len(redirects)} redirect(s) from {_short(redirects[0])}: {message}"


def _short(url: str) -> str:
    return url if len(url) <= 200 else url[:197] + "…"
