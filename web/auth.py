"""Who is asking: API keys for the API, a login (by key) for the pages, CSRF tokens on every
form, secure headers on every response. With auth off (the dev default) every request is
the local default tenant."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from flask import Blueprint, Flask, g, redirect, render_template, request, session, url_for

from tasks.errors import PixelmillError
from tasks.settings import Settings
from web.extensions import pixelmill

bp = Blueprint("auth", __name__)

OPEN_ENDPOINTS = {"auth.login", "ops.healthz", "ops.metrics", "static", "openapi.spec", "openapi.docs"}  # metrics: PIXELMILL_METRICS_TOKEN guards it
SECURE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
}


class Unauthorized(PixelmillError):
    code = "unauthorized"
    status = 401


class CsrfFailed(PixelmillError):
    code = "csrf_failed"
    status = 400


def init_app(app: Flask, settings: Settings) -> None:
    app.secret_key = settings.secret_key or _persistent_secret(settings.data_dir)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    app.before_request(_authenticate)
    app.before_request(_check_csrf)
    app.after_request(_secure_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.register_blueprint(bp)


def _persistent_secret(data_dir: Path) -> str:
    """One secret shared by every web process on this data dir (sessions survive restarts)."""
    path = data_dir / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}")
        tmp.write_text(secrets.token_urlsafe(48))
        tmp.replace(path) if not path.exists() else tmp.unlink()
    return path.read_text().strip()


def _authenticate():
    settings = pixelmill.services.settings
    if not settings.auth_enabled:
        g.tenant = settings.default_tenant
        return None
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if request.path.startswith("/api/"):
        plaintext = _key_from_headers()
        key = pixelmill.services.tenants.resolve(plaintext) if plaintext else None
        if key is None:
            raise Unauthorized("send a valid API key as 'Authorization: Bearer pm_…' (or an X-API-Key header)")
        g.tenant = key.tenant
        return None
    tenant = session.get("tenant")
    if tenant is None:
        return redirect(url_for("auth.login", next=request.full_path))
    g.tenant = tenant
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
            session["tenant"] = key.tenant
            target = request.args.get("next", "")
            return redirect(target if target.startswith("/") and not target.startswith("//") else url_for("ui.index"))
        error = "That key is not valid (or was revoked)."
    return render_template("login.html", error=error), (401 if error else 200)


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("auth.login") if pixelmill.services.settings.auth_enabled else url_for("ui.index"))

