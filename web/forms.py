"""Reading uploads and parameters out of a multipart request."""

from __future__ import annotations

import json
from typing import Any

from flask import Request
from pydantic import ValidationError

from tasks.errors import PixelmillError
from tasks.jobs import JobParams
from tasks.submit import Upload
from tasks.webhooks.models import SubscriptionRequest, parse_events

PARAM_FIELDS = frozenset(JobParams.model_fields)
# Fields of a submission that are not generation parameters (read by their own helpers).
WEBHOOK_FIELDS = frozenset({"webhook_url", "webhook_events"})
SUBMISSION_FIELDS = frozenset({"params", "_form", "csrf_token", "deadline_s"}) | WEBHOOK_FIELDS
MAX_DEADLINE_S = 7 * 24 * 3600
_INT_LITERALS = {"upscale"}


class BadRequest(PixelmillError):
    code = "bad_request"
    status = 400


def read_params(request: Request, *, strict: bool) -> JobParams:
    """Parameters from a ``params`` JSON field and/or individual form fields.

    ``strict`` (the API) refuses unknown fields so a typo is an error, not a silent default.
    """
    data: dict[str, Any] = {}
    if raw := request.form.get("params"):
        try:
            data.update(json.loads(raw))
        except json.JSONDecodeError as e:
            raise BadRequest(f"the params field is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise BadRequest("the params field must be a JSON object")
        for name in WEBHOOK_FIELDS:  # read by read_webhook
            data.pop(name, None)
    for name, value in request.form.items():
        if name in SUBMISSION_FIELDS or value == "":
            continue
        if name not in PARAM_FIELDS:
            if strict:
                raise BadRequest(f"unknown parameter {name!r}; known: {', '.join(sorted(PARAM_FIELDS))}")
            continue
        data[name] = int(value) if name in _INT_LITERALS and value.isdigit() else value
    for checkbox in ("sharpen", "local_contrast"):
        if not strict and checkbox not in request.form and request.form.get("_form") == "1":
            data.setdefault(checkbox, False)
    return JobParams.model_validate(data)


def read_deadline(request: Request, *, default: float | None) -> float | None:
    """Seconds the job may take in all: the ``deadline_s`` field or a ``Cancel-After`` header."""
    raw = request.form.get("deadline_s") or request.headers.get("Cancel-After")
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError as e:
        raise BadRequest(f"deadline_s must be a number of seconds, got {raw!r}") from e
    if not 1 <= seconds <= MAX_DEADLINE_S:
        raise BadRequest(f"deadline_s must be between 1 and {MAX_DEADLINE_S} seconds, got {raw}")
    return seconds


def read_webhook(request: Request, *, default_events: tuple[str, ...]) -> SubscriptionRequest | None:
    """``webhook_url`` and ``webhook_events`` (comma-separated, a JSON list, or repeated fields),
    as form fields or inside the ``params`` JSON; None when no URL was given."""
    in_params: dict[str, Any] = {}
    if raw := request.form.get("params"):
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError:
            loaded = {}
        in_params = loaded if isinstance(loaded, dict) else {}
    url = (request.form.get("webhook_url") or in_params.get("webhook_url") or "").strip()
    events: Any = [e for e in request.form.getlist("webhook_events") if e.strip()]
    if len(events) == 1:
        events = events[0]
    events = events or in_params.get("webhook_events")
    if not url:
        if events and request.form.get("_form") != "1":
            raise BadRequest("webhook_events was given without webhook_url")
        return None
    return SubscriptionRequest(url=url, events=parse_events(events, default=default_events))


def read_uploads(request: Request, *, field: str, max_files: int) -> list[Upload]:
    files = [f for f in request.files.getlist(field) if f and f.filename is not None]
    if not files:
        raise BadRequest(f"no image uploaded: send the file in a multipart field named {field!r}")
    if len(files) > max_files:
        raise BadRequest(f"{len(files)} files sent; at most {max_files} per batch")
    return [Upload(name=f.filename or "upload", data=f.read()) for f in files]


__all__ = ["BadRequest", "ValidationError", "read_params", "read_uploads"]
