"""Reading uploads and parameters out of a multipart request."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
Q = TypeVar("Q", bound=BaseModel)


class BadRequest(PixelmillError):
    code = "bad_request"
    status = 400


class UnsupportedMediaType(PixelmillError):
    code = "unsupported_media_type"
    status = 415


class SubmissionFields(BaseModel):
    """The multipart fields of a submission besides the image(s) and the generation parameters
    (which are ``JobParams``' fields, sent one by one or together as the ``params`` JSON)."""

    model_config = ConfigDict(extra="ignore")

    params: str | None = Field(None, description="the generation parameters as one JSON object (JobParams); "
                                                 "fields sent one by one override it")
    deadline_s: float | None = Field(None, ge=1, le=MAX_DEADLINE_S, allow_inf_nan=False,
                                     description="seconds the job may take in all before it is canceled "
                                                 "(or send a Cancel-After header)")
    webhook_url: str | None = Field(None, max_length=2048,
                                    description="a URL to call with this job's (batch's) events, signed; "
                                                "the endpoint's secret comes back once in the response")
    webhook_events: str | None = Field(None, description="event names, comma-separated or a JSON list "
                                                         "(default: every job event; * for all)")


class JobListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(50, ge=1, le=200, description="how many of the most recent jobs")


class DeliveryListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(100, ge=1, le=1000, description="how many deliveries, the most recent first")


def read_query(request: Request, model: type[Q]) -> Q:
    """The query string validated by ``model`` (422 with the field and the reason when it does not fit)."""
    return model.model_validate(request.args.to_dict())


def read_json_body(request: Request) -> dict[str, Any]:
    """A JSON object body (a form body is taken as its fields); an empty body is an empty object."""
    if not request.data and not request.form:
        return {}
    try:
        data = request.get_json(silent=True)
    except RecursionError as e:  # a body nested thousands deep
        raise BadRequest("the JSON body is nested too deeply") from e
    if data is None:
        if request.form:
            return {k: v for k, v in request.form.items() if k != "csrf_token"}
        raise BadRequest("send a JSON object (Content-Type: application/json)")
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def read_params(request: Request, *, strict: bool) -> JobParams:
    """Parameters from a ``params`` JSON field and/or individual form fields.

    ``strict`` (the API) refuses unknown fields so a typo is an error, not a silent default.
    """
    data = dict(_params_json(request))
    for name in WEBHOOK_FIELDS:  # read by read_webhook
        data.pop(name, None)
    for name, value in request.form.items():
        if name in SUBMISSION_FIELDS or value == "":
            continue
        if name not in PARAM_FIELDS:
            if strict:
                raise BadRequest(f"unknown parameter {name!r}; known: {', '.join(sorted(PARAM_FIELDS))}")
            continue
        data[name] = int(value) if name in _INT_LITERALS and value.isascii() and value.isdigit() else value
    for checkbox in ("sharpen", "local_contrast"):
        if not strict and checkbox not in request.form and request.form.get("_form") == "1":
            data.setdefault(checkbox, False)
    return JobParams.model_validate(data)


def _params_json(request: Request) -> dict[str, Any]:
    """The ``params`` field as a JSON object ({} when it is absent)."""
    raw = request.form.get("params")
    if not raw:
        return {}
    try:
        loaded = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadRequest(f"the params field is not valid JSON: {e}") from e
    except RecursionError as e:
        raise BadRequest("the params field is nested too deeply to be a JSON object of parameters") from e
    if not isinstance(loaded, dict):
        raise BadRequest('the params field must be a JSON object, e.g. {"style": "sketch", "upscale": 2}')
    return loaded


def read_deadline(request: Request, *, default: float | None) -> float | None:
    """Seconds the job may take in all: the ``deadline_s`` field or a ``Cancel-After`` header."""
    raw = request.form.get("deadline_s") or request.headers.get("Cancel-After")
    if not raw:
        return default
    try:
        return SubmissionFields.model_validate({"deadline_s": raw}).deadline_s
    except ValidationError as e:
        raise BadRequest(f"deadline_s must be a number of seconds between 1 and {MAX_DEADLINE_S}, "
                         f"got {raw!r}") from e


def read_webhook(request: Request, *, default_events: tuple[str, ...]) -> SubscriptionRequest | None:
    """``webhook_url`` and ``webhook_events`` (comma-separated, a JSON list, or repeated fields),
    as form fields or inside the ``params`` JSON; None when no URL was given."""
    in_params = _params_json(request)
    url = request.form.get("webhook_url") or in_params.get("webhook_url") or ""
    if not isinstance(url, str):
        raise BadRequest("webhook_url must be a string: the URL to call")
    url = url.strip()
    events: Any = [e for e in request.form.getlist("webhook_events") if e.strip()]
    if len(events) == 1:
        events = events[0]
    events = events or in_params.get("webhook_events")
    if not url:
        if events and request.form.get("_form") != "1":
            raise BadRequest("webhook_events was given without webhook_url")
        return None
    return SubscriptionRequest(url=url, events=parse_events(events, default=default_events))


def require_multipart(request: Request, *, field: str) -> None:
    """415 for a body that cannot carry a file (JSON, url-encoded …), before its fields are read."""
    if request.mimetype != "multipart/form-data" and (request.mimetype or request.content_length):
        raise UnsupportedMediaType(f"send the upload as multipart/form-data (got {request.mimetype or 'no type'}), "
                                   f"with the image file in a field named {field!r}")


def read_uploads(request: Request, *, field: str, max_files: int) -> list[Upload]:
    require_multipart(request, field=field)
    files = [f for f in request.files.getlist(field) if f and f.filename is not None]
    if not files:
        raise BadRequest(f"no image uploaded: send the file in a multipart field named {field!r}")
    if len(files) > max_files:
        raise BadRequest(f"{len(files)} files sent; at most {max_files} per batch")
    return [Upload(name=f.filename or "upload", data=f.read()) for f in files]


__all__ = ["BadRequest", "ValidationError", "read_params", "read_uploads"]
