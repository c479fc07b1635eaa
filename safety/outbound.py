"""The outbound-URL guard (SSRF) and the one sender that uses it.

``check_url`` parses a URL, resolves its host the way the system resolver (and curl) does —
so numeric forms such as ``http://2130706433/``, ``0x7f.1``, ``017700000001`` or ``127.1``
come out as the address they really mean — and refuses it if *any* resolved address is
loopback, private, link-local, multicast, unspecified, reserved or otherwise not globally
routable, looking inside IPv4-mapped, IPv4-compatible, 6to4, Teredo and NAT64 IPv6 forms.

``post`` then connects to exactly the addresses that were checked (never re-resolving the
name, so DNS rebinding cannot swap in another one), sends the Host header and, for https,
SNI and certificate checks for the original name, follows no redirect, and reads at most a
capped number of response bytes under an overall deadline.

Nothing here imports the rest of pixelmill: the caller passes ``allow_private`` and limits.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from safety.errors import SafetyError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

MAX_URL_LENGTH = 2048
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
WEBHOOK_PRIVATE_HINT = ("webhooks go to public addresses only (set PIXELMILL_WEBHOOK_ALLOW_PRIVATE=1 to "
                        "allow private ones on a trusted network)")


class OutboundRefused(SafetyError):
    """The URL may not be called: bad form, or its host resolves to a forbidden address."""

    code = "url_refused"


class UnresolvableHost(OutboundRefused):
    """The host name did not resolve (this may pass: DNS trouble is retried at delivery)."""

    code = "unresolvable_host"


class OutboundError(SafetyError):
    """The request was allowed but did not complete (connect, TLS, timeout, protocol)."""

    code = "network_error"

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True)
class CheckedTarget:
    """A URL that passed the guard, with the addresses it was checked against."""

    url: str
    scheme: str
    host: str  # as written in the URL, without brackets
    port: int
    path: str  # path and query, at least "/"
    addresses: tuple[str, ...]  # every resolved address, all of them allowed; connect only to these

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool
    latency_s: float
    address: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def check_url(url: str, *, allow_private: bool, resolve: Resolver | None = None,
              private_hint: str = WEBHOOK_PRIVATE_HINT) -> CheckedTarget:
    """Parse, resolve and check ``url``; raise ``OutboundRefused`` with a message saying why not.
    ``private_hint`` ends the message of a forbidden address (what may be called, and the setting)."""
    if not isinstance(url, str) or not url.strip():
        raise OutboundRefused("the webhook URL is empty")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise OutboundRefused(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise OutboundRefused(f"{url!r} is not a valid URL: {e}") from e
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise OutboundRefused(f"{url!r}: only http and https URLs can receive webhooks")
    if parts.username is not None or parts.password is not None:
        raise OutboundRefused(f"{url!r}: credentials in the URL are not supported; "
                              "verify deliveries with the signing secret instead")
    host = parts.hostname
    if not host:
        raise OutboundRefused(f"{url!r} has no host")
    if port is None:  # not `port or …`: an explicit :0 is falsy and would become the default port
        port = 443 if scheme == "https" else 80
    if port == 0:
        raise OutboundRefused(f"{url!r}: port 0 cannot be called")
    addresses = _resolve(host, port, resolve)
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(ipaddress.ip_address(address))
            if reason:
                shown = host if host == address else f"{host} ({address})"
                raise OutboundRefused(
                    f"{url!r} is refused: {shown} is {reason}; {private_hint}"
                )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return CheckedTarget(url=url, scheme=scheme, host=host, port=port, path=path, addresses=addresses)


def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be called, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        reason = forbidden_reason(address.ipv4_mapped)
        return f"{reason} (IPv4-mapped {address.ipv4_mapped})" if reason else None
    for embedded in _embedded_ipv4(address):
        reason = forbidden_reason(embedded)
        if reason:
            return f"{reason} ({embedded}, embedded in an IPv6 address)"
    checks = (
        ("is_loopback", "a loopback address"),
        ("is_unspecified", "the unspecified address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),
        ("is_private", "a private address"),
        ("is_site_local", "a site-local address"),
    )
    for attribute, reason in checks:
        if getattr(address, attribute, False):
            return reason
    if not address.is_global:
        return "not a globally routable address"
    return None


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = []
    if address.sixtofour:
        found.append(address.sixtofour)
    if address.teredo:
        found.extend(address.teredo)
    if address in _NAT64 or address in _NAT64_LOCAL or (address in _IPV4_COMPATIBLE and int(address) > 1):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _resolve(host: str, port: int, resolve: Resolver | None) -> tuple[str, ...]:
    try:
        if resolve is not None:
            found = list(resolve(host, port))
        else:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = [info[4][0] for info in infos]
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise UnresolvableHost(f"the host {host!r} could not be resolved: {e}") from e
    addresses: list[str] = []
    for address in found:
        address = address.split("%", 1)[0]  # drop an IPv6 zone id
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnresolvableHost(f"the host {host!r} resolved to no address")
    return tuple(addresses)


# --- sending --------------------------------------------------------------------------------

class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed IP, with SNI and certificate checks for the original host name."""

    def __init__(self, address: str, port: int, *, server_hostname: str, timeout: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(address, port, timeout=timeout, context=context)
        self._server_hostname = server_hostname

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self._server_hostname)
        except BaseException:
            sock.close()
            raise


def post(target: CheckedTarget, *, body: bytes, headers: dict[str, str], timeout_s: float,
         max_response_bytes: int = 64 * 1024, ssl_context: ssl.SSLContext | None = None) -> Response:
    """POST ``body`` to the checked target; no redirects are followed (a 3xx is just a status).

    Tries the checked addresses in order until one accepts the connection. ``timeout_s``
    bounds each socket operation and the whole exchange. Raises ``OutboundError``.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    conn: http.client.HTTPConnection | None = None
    try:
        conn, address = connect_first(target, deadline=deadline, ssl_context=ssl_context)
        conn.request("POST", target.path, body=body, headers={**headers, "Host": target.host_header})
        _set_timeout(conn, deadline)
        response = conn.getresponse()
        data, truncated = _read_capped(conn, response, cap=max_response_bytes, deadline=deadline)
        return Response(status=response.status,
                        headers={k.lower(): v for k, v in response.getheaders()},
                        body=data, truncated=truncated, latency_s=time.monotonic() - started,
                        address=address)
    except NotConnected as e:
        if e.last_error is None:
            raise OutboundError(f"no answer from {target.host_header} within {timeout_s:g} s", timeout=True) from e
        raise OutboundError(f"could not connect to {target.host_header}: {e.last_error}") from e.last_error
    except (socket.timeout, TimeoutError) as e:
        raise OutboundError(f"no answer from {target.host_header} within {timeout_s:g} s", timeout=True) from e
    except ssl.SSLError as e:
        raise OutboundError(f"TLS with {target.host_header} failed: {e}") from e
    except (http.client.HTTPException, OSError) as e:
        raise OutboundError(f"{target.host_header}: {type(e).__name__}: {e}") from e
    finally:
        if conn is not None:
            conn.close()


class NotConnected(Exception):
    """No checked address accepted a connection before the deadline; ``last_error`` is the last
    refusal (None: the time ran out before any attempt)."""

    def __init__(self, last_error: Exception | None) -> None:
        super().__init__(str(last_error or "no time left to connect"))
        self.last_error = last_error


def connect_first(target: CheckedTarget, *, deadline: float, ssl_context: ssl.SSLContext | None,
                  tls_errors_end: bool = False) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the first of the checked addresses that accepts one before ``deadline``, and
    that address. A refused connection moves on to the next address (a failed TLS handshake too,
    unless ``tls_errors_end``: then ``ssl.SSLError`` is raised); a timeout is raised as it comes;
    ``NotConnected`` when no address is left. The caller closes the connection."""
    last_error: Exception | None = None
    for address in target.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        conn = _connection(target, address, timeout=remaining, ssl_context=ssl_context)
        try:
            conn.connect()
        except ssl.SSLError as e:
            conn.close()
            if tls_errors_end:
                raise
            last_error = e
        except (ConnectionError, OSError) as e:
            conn.close()
            if isinstance(e, (socket.timeout, TimeoutError)):
                raise
            last_error = e
        else:
            return conn, address
    raise NotConnected(last_error)


def _connection(target: CheckedTarget, address: str, *, timeout: float,
                ssl_context: ssl.SSLContext | None) -> http.client.HTTPConnection:
    if target.scheme == "https":
        return _PinnedHTTPSConnection(address, target.port, server_hostname=target.host, timeout=timeout,
                                      context=ssl_context or ssl.create_default_context())
    return http.client.HTTPConnection(address, target.port, timeout=timeout)


def _set_timeout(conn: http.client.HTTPConnection, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed")
    if conn.sock is not None:
        conn.sock.settimeout(remaining)


def _read_capped(conn: http.client.HTTPConnection, response: http.client.HTTPResponse, *, cap: int,
                 deadline: float) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        _set_timeout(conn, deadline)
        chunk = response.read1(min(16 * 1024, cap + 1 - size)) if cap + 1 - size > 0 else b""
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    return data[:cap], size > cap
