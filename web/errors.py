"""One error shape for the API — {"error": {"code", "message"}} with the right status —
and friendly pages for the browser."""

from __future__ import annotations

import logging

import redis
from flask import Flask, jsonify, make_response, render_template, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from safety.errors import InputRejected
from tasks.errors import PixelmillError

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    app.register_error_handler(PixelmillError, _pixelmill_error)
    app.register_error_handler(InputRejected, lambda e: respond(e.status, e.code, str(e)))
    app.register_error_handler(ValidationError, lambda e: respond(422, "invalid_parameters", describe(e)))
    app.register_error_handler(redis.RedisError, _redis_down)
    app.register_error_handler(HTTPException, _http_error)


def respond(status: int, code: str, message: str):
    if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        return jsonify(error={"code": code, "message": message}), status
    return render_template("error.html", status=status, code=code, message=message), status


def describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "parameters"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _pixelmill_error(e: PixelmillError):
    response, status = respond(e.status, e.code, str(e))
    if retry_after := getattr(e, "retry_after", None):
        response = make_response(response, status)
        response.headers["Retry-After"] = str(retry_after)
        return response
    return response, status


def _redis_down(e: redis.RedisError):
    log.error("redis unavailable: %s", e)
    return respond(503, "store_unavailable", "the job store is unavailable right now; try again in a minute")


def _http_error(e: HTTPException):
    messages = {
        413: "the request is too large; upload fewer or smaller files",
        404: "nothing here",
        405: f"{request.method} is not allowed here",
    }
    code = (e.name or "error").lower().replace(" ", "_")
    return respond(e.code or 500, code, messages.get(e.code or 0, e.description or e.name))
