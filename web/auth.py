"""Who is asking: API keys for the API, a login (by key) for the pages, CSRF tokens on every
form, secure headers on every response. With auth off (the dev default) every request is
the local default tenant.

A login session holds the id of the key it was opened with, and that key is checked on every
request: revoking (or the expiry of) the key ends its sessions at once. Sessions last
PIXELMILL_SESSION_LIFETIME_S; the cookie is HttpOnly, SameSite=Lax, and Secure over HTTPS."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path

from flask import Blueprint, Flask, g, has_request_context, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from tasks.errors import PixelmillError
from tasks.settings import Settings
from web.extensions import pixelmill

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)

OPEN_ENDPOINTS = {"auth.login", "ops.healthz", "ops.metrics", "static", "openapi.spec", "openapi.docs"}  # metrics: PIXELMILL_METRICS_TOKEN guards it
SECURE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                               "form-action 'self'",
}


class Unauthorized(PixelmillError):
    code = "unauthorized"
    status = 401


class CsrfFailed(PixelmillError):
    code = "csrf_failed"
    status = 400


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the cookie Secure whenever the request came over HTTPS
    (``request.is_secure`` honours ProxyFix where one is set up) or SESSION_COOKIE_SECURE says so."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return super().get_cookie_secure(app) or (has_request_context() and request.is_secure)


def init_app(app: Flask, settings: Settings) -> None:
    app.secret_key = settings.secret_key or _persistent_secret(settings.data_dir)
    app.session_interface = SessionInterface()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=settings.session_cookie_secure,
                      PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.session_lifetime_s))
    app.before_request(_authenticate)
    app.before_request(_check_csrf)
    app.after_request(_secure_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.register_blueprint(bp)


def _persistent_secret(data_dir: Path) -> str:
    """One secret shared by every web process on this data dir (sessions survive restarts), in a
    file only its owner reads (0600). It is created with O_EXCL: of processes starting at once, one
    writes it and the others read that one's secret."""
    path = data_dir / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _restrict(path)
        return _read_secret(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
        f.flush()
        os.fsync(f.fileno())
    return _read_secret(path)


def _restrict(path: Path) -> None:
    """A secret file an older version made readable by others: owner only from now on."""
    if path.stat().st_mode & 0o077:
        try:
            os.chmod(path, 0o600)
        except OSError as e:
            log.warning("%s is readable by other users and cannot be restricted (%s): chmod 600 it", path, e)


def _read_secret(path: Path, *, wait_s: float = 5.0) -> str:
    """The file's secret; one just created by another process may not be written yet: wait for it."""
    deadline = time.monotonic() + wait_s
    while not (secret := path.read_text().strip()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the session secret file {path} is empty: delete it (a new one is made) "
                               "or set PIXELMILL_SECRET_KEY")
        time.sleep(0.05)
    return secret


def _authenticate():
    """Sets ``g.tenant`` and ``g.api_key`` (the key of this request or session; None while auth is off)."""
    settings = pixelmill.services.settings
    g.api_key = None
    if not settings.auth_enabled:
        g.tenant = settings.default_tenant
        return None
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    tenants = pixelmill.services.tenants
    if request.path.startswith("/api/"):
        plaintext = _key_from_headers()
        key = tenants.resolve(plaintext) if plaintext else None
        if key is None:
            raise Unauthorized("send a valid API key as 'Authorization: Bearer pm_…' (or an X-API-Key header)")
        g.tenant, g.api_key = key.tenant, key
        return None
    tenant, key_id = session.get("tenant"), session.get("key_id")
    key = tenants.resolve_id(tenant=tenant, key_id=key_id) if tenant and key_id else None
    if key is None:  # never signed in, or its key was revoked or expired since
        session.clear()
        return redirect(url_for("auth.login", next=request.full_path))
    g.tenant, g.api_key = key.tenant, key
    return None


def _key_from_headers() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("X-API-Key")


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _check_csrf():
    """Forms (cookie-authenticated) need the session's token; the API is authenticated by header."""
    if request.method in {"GET", "HEAD", "OPTIONS"} or request.path.startswith("/api/"):
        return None
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent, expected):
        raise CsrfFailed("the form expired or came from another site; reload the page and submit again")
    return None


def _secure_headers(response):
    for name, value in SECURE_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.route("/login", methods=["GET", "POST"])
def login():
    settings = pixelmill.services.settings
    if not settings.auth_enabled:
        return redirect(url_for("ui.index"))
    error = None
    if request.method == "POST":
        key = pixelmill.services.tenants.resolve(request.form.get("api_key", "").strip())
        if key is not None:
            session.clear()
            session.permanent = True  # lasts PERMANENT_SESSION_LIFETIME (PIXELMILL_SESSION_LIFETIME_S)
            session["tenant"], session["key_id"] = key.tenant, key.id
            return redirect(local_path(request.args.get("next", "")) or url_for("ui.index"))
        error = "That key is not valid (or was revoked, or expired)."
    return render_template("login.html", error=error), (401 if error else 200)


def local_path(target: str) -> str | None:
    """``target`` if it is a path of this site, else None. Browsers drop tabs and newlines anywhere
    in a URL and read a backslash as a slash, so ``next=/%09/evil.example`` (a tab) or
    ``/%5Cevil.example`` would leave the site: without whitespace and control characters, the
    path must be "/" alone or "/" followed by neither "/" nor a backslash."""
    cleaned = "".join(ch for ch in target if ch.isprintable() and not ch.isspace())
    if cleaned == "/" or (cleaned.startswith("/") and cleaned[1] not in "/\\"):
        return cleaned
    return None


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("auth.login") if pixelmill.services.settings.auth_enabled else url_for("ui.index"))

