"""Reading uploads and parameters out of a multipart request."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Request, request as current_request
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
# Request bodies: the upload routes take up to PIXELMILL_MAX_REQUEST_BYTES; every other route
# (JSON bodies, small forms) at most MAX_JSON_BYTES, so no route buffers 200 MiB it never needed.
MAX_JSON_BYTES = 64 * 1024
UPLOAD_ENDPOINTS = frozenset({"api.create_job", "api.create_batch", "ui.submit"})
Q = TypeVar("Q", bound=BaseModel)


class BadRequest(PixelmillError):
    code = "bad_request"
    status = 400


class UnsupportedMediaType(PixelmillError):
    code = "unsupported_media_type"
    status = 415


class BodyTooLarge(PixelmillError):
    code = "request_entity_too_large"
    status = 413


def init_body_limits(app: Flask, *, max_upload_request: int) -> None:
    """Each route's own body limit, set on the request before anything reads its body (register
    before the hooks that parse forms). A body announced larger is refused at once (413); one
    sent without a length is cut off by Werkzeug at the limit (413 too)."""

    def limit_body() -> None:
        upload = current_request.endpoint in UPLOAD_ENDPOINTS
        limit = max_upload_request if upload else MAX_JSON_BYTES
        current_request.max_content_length = limit
        size = current_request.content_length
        if size is not None and size > limit:
            where = ("upload fewer or smaller files (PIXELMILL_MAX_REQUEST_BYTES)" if upload
                     else "bodies other than uploads take at most 64 KiB")
            raise BodyTooLarge(f"the request is too large: {size} bytes, at most {limit} here; {where}")

    app.before_request(limit_body)


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
    A JSON submission (``is_json``) has them as members of its object, beside ``image(s)``.
    """
    if is_json(request):
        return _json_params(request)
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
    if is_json(request):
        raw = read_json_submission(request).get("deadline_s")
        raw = request.headers.get("Cancel-After") if raw is None else raw
    else:
        raw = request.form.get("deadline_s") or request.headers.get("Cancel-After")
    if raw is None or raw == "":
        return default
    try:
        return SubmissionFields.model_validate({"deadline_s": raw}).deadline_s
    except ValidationError as e:
        raise BadRequest(f"deadline_s must be a number of seconds between 1 and {MAX_DEADLINE_S}, "
                         f"got {raw!r}") from e


def read_webhook(request: Request, *, default_events: tuple[str, ...]) -> SubscriptionRequest | None:
    """``webhook_url`` and ``webhook_events`` (comma-separated, a JSON list, or repeated fields),
    as form fields or inside the ``params`` JSON (a JSON submission: members of its object); None when
    no URL was given."""
    if is_json(request):
        body = read_json_submission(request)
        nested = body.get("params") if isinstance(body.get("params"), dict) else {}
        url, events = body.get("webhook_url", nested.get("webhook_url")), body.get("webhook_events",
                                                                                   nested.get("webhook_events"))
        if url is not None and not isinstance(url, str):
            raise BadRequest("webhook_url must be a string: the URL to call")
        if not (url or "").strip():
            if events:
                raise BadRequest("webhook_events was given without webhook_url")
            return None
        return SubscriptionRequest(url=url.strip(), events=parse_events(events, default=default_events))
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


# --- JSON submissions (docs/api.md): {"image": "https://…" | "data:image/…;base64,…", params …} --------

JSON_IMAGE_FIELDS = frozenset({"image", "images"})


def is_json(request: Request) -> bool:
    return request.mimetype == "application/json"


def require_submission(request: Request, *, field: str) -> None:
    """415 for a submission that is neither multipart/form-data (files) nor application/json (URLs or
    data URIs), before its fields are read."""
    if is_json(request):
        return
    if request.mimetype != "multipart/form-data" and (request.mimetype or request.content_length):
        where = "a list of" if field == "images" else "an"
        raise UnsupportedMediaType(
            f"send the image(s) as multipart/form-data (got {request.mimetype or 'no type'}) with the file in a "
            f"field named {field!r}, or as application/json with {field!r} holding {where} https:// URL or "
            "data:image/…;base64, URI")


def read_json_submission(request: Request) -> dict[str, Any]:
    """The JSON object of a submission (parsed once per request); 400 when it is not one."""
    try:
        data = request.get_json(silent=True)
    except RecursionError as e:  # a body nested thousands deep
        raise BadRequest("the JSON body is nested too deeply") from e
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object, e.g. {"image": "https://example.com/photo.jpg", '
                         '"style": "sketch"}')
    return data


def read_json_inputs(request: Request, *, field: str, max_files: int, read: Callable[[Any, str], Any]) -> list:
    """The image values of a JSON submission: ``image`` (one) for a job, ``images`` (a list) for a
    batch, each turned into an input by ``read(value, name)`` (tasks.inputs.read_image_value)."""
    body = read_json_submission(request)
    other = "images" if field == "image" else "image"
    if other in body:
        raise BadRequest("a job takes one image, in 'image'; send several as a batch (POST /api/v1/batches with "
                         "'images')" if field == "image" else
                         "a batch takes its images as a list in 'images' (one image: POST /api/v1/jobs with 'image')")
    value = body.get(field)
    if value is None or value == "" or value == []:
        raise BadRequest(f"no image: send {field!r} with " + ("an https:// URL or a data:image/…;base64, URI"
                                                                if field == "image" else
                                                                "a list of https:// URLs or data URIs"))
    if field == "image":
        return [read(value, "image")]
    if not isinstance(value, list):
        raise BadRequest("images must be a list of https:// URLs or data:image/…;base64, URIs")
    if len(value) > max_files:
        raise BadRequest(f"{len(value)} images sent; at most {max_files} per batch (PIXELMILL_MAX_BATCH_FILES)")
    return [read(item, f"images[{i}]") for i, item in enumerate(value)]


def _json_params(request: Request) -> JobParams:
    body = read_json_submission(request)
    nested = body.get("params", {})
    if not isinstance(nested, dict):
        raise BadRequest('params must be a JSON object, e.g. {"style": "sketch", "upscale": 2}')
    data = {k: v for k, v in nested.items() if k not in WEBHOOK_FIELDS}
    for name, value in body.items():
        if name in JSON_IMAGE_FIELDS or name in SUBMISSION_FIELDS:
            continue
        if name not in PARAM_FIELDS:
            raise BadRequest(f"unknown parameter {name!r}; known: {', '.join(sorted(PARAM_FIELDS))}")
        data[name] = value
    return JobParams.model_validate(data)


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
    if len(files) > max_files:  # `pixelmill submit` reads the cap out of "at most N per batch" and shrinks
        cap = "PIXELMILL_MAX_BATCH_FILES" if max_files > 1 else "a job takes one image; send several as a batch"
        raise BadRequest(f"{len(files)} files sent; at most {max_files} per batch ({cap})")
    return [Upload(name=f.filename or "upload", data=f.read()) for f in files]


__all__ = ["BadRequest", "ValidationError", "read_params", "read_uploads"]
