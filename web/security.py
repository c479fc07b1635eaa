"""Who may reach the app at all, and from where — with auth on or off.

* The Host: a request must name this service (a loopback name, or one of
  ``PIXELMILL_ALLOWED_HOSTS``); any other is 400 on every route, /healthz and static files
  included, so a name rebound to 127.0.0.1 (DNS rebinding) reaches nothing.
* The origin of a change: a POST/PUT/PATCH/DELETE a browser sends from another site's page
  (``Sec-Fetch-Site: cross-site`` or ``same-site``, or an ``Origin`` other than the Host) is 403,
  on the JSON API and on the forms (which keep their CSRF tokens), so no web page its user opens
  can drive a local service. Clients that are not browsers (curl, the CLI, requests) send neither
  header and are not affected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, jsonify, request

from tasks.errors import PixelmillError
from tasks.settings import Settings

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": "80", "https": "443"}
OTHER_SITE = frozenset({"cross-site", "same-site"})  # same-site is still another origin


class UntrustedHost(PixelmillError):
    code = "untrusted_host"
    status = 400


class CrossSiteRefused(PixelmillError):
    code = "cross_site"
    status = 403


def init_app(app: Flask, settings: Settings) -> None:
    """Register before every other hook (auth included): nothing runs for a refused request."""
    trusted = (*LOOPBACK_HOSTS, *settings.allowed_hosts)

    def check_request() -> None:
        check_host(request.host, trusted)
        if request.method not in SAFE_METHODS:
            check_same_origin()

    app.before_request(check_request)
    for error in (UntrustedHost, CrossSiteRefused):  # JSON whatever the path: no page, no session
        app.register_error_handler(error, _refuse)


def split_host(value: str) -> tuple[str, str]:
    """``Host:`` or an origin's netloc → (name, port): lower case, no trailing dot, IPv6 in brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name, port = name + "]", rest.removeprefix(":")
    else:
        name, _, port = value.partition(":")
    return name.rstrip("."), port


def is_trusted_host(host: str, trusted: tuple[str, ...]) -> bool:
    """``host`` (with any port) is one of ``trusted``; an entry ``.example.com`` also admits its subdomains."""
    name, port = split_host(host)
    if not name or not (port == "" or port.isdigit()):
        return False
    for entry in trusted:
        if name == entry or (entry.startswith(".") and (name == entry[1:] or name.endswith(entry))):
            return True
    return False


def check_host(host: str, trusted: tuple[str, ...]) -> None:
    if not is_trusted_host(host, trusted):
        name = split_host(host)[0] or "<none>"
        raise UntrustedHost(
            f"this server does not answer to the host {name!r}. If that is its name, add it to "
            f"PIXELMILL_ALLOWED_HOSTS (comma-separated; loopback names are always allowed), "
            f"e.g. PIXELMILL_ALLOWED_HOSTS={name}")


def check_same_origin() -> None:
    """A browser's change must come from this origin; a request with neither header is not a browser's."""
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    origin = request.headers.get("Origin")
    if site in OTHER_SITE or (origin is not None and not _is_this_origin(origin)):
        came_from = origin if origin is not None else f"Sec-Fetch-Site: {site}"
        raise CrossSiteRefused(
            f"refused a {request.method} from another site ({came_from}): pixelmill takes changes only from "
            f"its own pages (served at {request.host}) and from clients that are not browsers (curl, the "
            f"pixelmill CLI, scripts). Open pixelmill's own page, or call the API from a script or server")


def _is_this_origin(origin: str) -> bool:
    """``Origin`` names the same host[:port] as the request (default ports aside); ``null`` never does."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc or "@" in parts.netloc:
        return False
    default = DEFAULT_PORTS[parts.scheme]
    origin_name, origin_port = split_host(parts.netloc)
    host_name, host_port = split_host(request.host)
    return (origin_name, origin_port or default) == (host_name, host_port or default)


def _refuse(error: PixelmillError):
    return jsonify(error={"code": error.code, "message": str(error)}), error.status
