"""The OpenAPI 3.1 description of the JSON API: ``GET /api/v1/openapi.json``, and the same
rendered as a page at ``GET /api/docs`` (web/api_docs.py).

Each operation is declared once, on its view: ``@operation(...)`` under the route decorator
names it and gives its tag, summary, parameters, body and answers. The document is built by
walking the app's routes under /api/v1 (method and path come from Flask's rule) and reading
each view's declaration; a test fails when such a route has none. Bodies and answers are
pydantic models — the very ones the handlers validate with (``JobParams``, ``EndpointCreate``,
``KeyCreate`` …) and answer with (``tasks.present.View`` and its kinds), turned into components
with ``model_json_schema``. A view declared to answer JSON returns its model (and, where
declared, the response headers): the decorator checks the model and answers it with the
declared status, so the document and the handlers cannot drift.

Why a small generator and not a library: spectree, flask-openapi3 and apiflask each want to
own the handlers — typed view signatures or their own Blueprint/Flask classes, and their own
request parsing and error shape. Here the submissions are multipart with a ``params`` JSON
field *and* per-field overrides, errors already have one shape, and models already exist;
adopting a library would mean rewriting every handler to gain what ~300 lines give.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from tasks.jobs import JobParams
from tasks.present import View
from web.forms import SubmissionFields

bp = Blueprint("openapi", __name__)

SPEC_PATH = "/api/v1/openapi.json"
REF = "#/components/schemas/{model}"
EXTENSION = "pixelmill_openapi"


# --- what an operation is made of ---------------------------------------------------------------

@dataclass(frozen=True)
class Json:
    """A JSON body or answer validated by (or described by) ``model``."""

    model: type[BaseModel]
    example: Any = None  # a value, or a function making one when the document is built
    required: bool = True  # request bodies only: False when an empty body is fine


@dataclass(frozen=True)
class Multipart:
    """A multipart submission: image file(s) in ``field``, the parameters beside them. With
    ``json_example``, the same route also takes application/json: ``field`` holds an https URL or
    a data URI (a list of them when ``many``), the parameters are members of the same object."""

    field: str
    many: bool = False
    curl_fields: tuple[tuple[str, str], ...] = ()  # the fields shown in the curl example
    json_example: dict[str, Any] | None = None


@dataclass(frozen=True)
class Media:
    """An answer that is not JSON: an image, an event stream."""

    media_type: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True)
class Param:
    name: str
    location: str  # path | query | header
    schema: dict[str, Any]
    description: str
    required: bool = False
    example: Any = None


@dataclass(frozen=True)
class Operation:
    """One operation of the API, declared on its view: ``@operation(...)`` under ``@bp.get(...)``."""

    operation_id: str
    tag: str
    summary: str
    ok: tuple[int, Json | Media]  # the success status and what it carries
    description: str = ""
    body: Json | Multipart | None = None
    query: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()  # headers and query parameters beyond ``query``
    errors: dict[int, str] = field(default_factory=dict)  # status → when it happens
    headers: dict[str, str] = field(default_factory=dict)  # response headers of the success answer
    public: bool = False  # answers without an API key
    method: str = ""  # these two from the route, once published
    path: str = ""  # OpenAPI form: /api/v1/jobs/{job_id}

    def __call__(self, view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def answer(*args: Any, **kwargs: Any) -> Any:
            return self.respond(view(*args, **kwargs))

        answer.openapi_operation = self  # type: ignore[attr-defined]
        return answer

    def respond(self, result: Any) -> Any:
        """A JSON answer: the view's model (or ``(model, headers)``) with the declared status."""
        status, what = self.ok
        if not isinstance(what, Json):
            return result  # an image or a stream: the view's own response
        model, headers = result if isinstance(result, tuple) else (result, {})
        if type(model) is not what.model or set(headers) != set(self.headers):
            raise TypeError(f"{self.operation_id} is declared to answer {what.model.__name__} with headers "
                            f"{sorted(self.headers)}, not {type(model).__name__} with {sorted(headers)}")
        return jsonify(model.model_dump(mode="json")), status, headers


operation = Operation  # a decorator: @operation("showJob", "jobs", "A job", ok=(200, Json(JobDetail)))


class ErrorDetail(View):
    code: str = Field(description="machine-readable, e.g. not_found, invalid_parameters, rate_limited",
                      examples=["not_found"])
    message: str = Field(description="what went wrong and what to do about it, for a person",
                         examples=["no job with id 'abc'"])


class ErrorResponse(View):
    """Every error of the API: one shape, with the HTTP status that fits."""

    error: ErrorDetail


# Errors every authenticated operation may answer.
COMMON_ERRORS = {
    401: "no valid API key (only when PIXELMILL_AUTH_ENABLED is on)",
    413: "the request body is larger than this route takes: 64 KiB (uploads: PIXELMILL_MAX_REQUEST_BYTES)",
    503: "the job store (Redis) or the queue is unavailable right now: retry in a minute",
}
ERROR_CODES = {  # status → codes the error body may carry, for the docs
    400: "bad_request, untrusted_host, bad_idempotency_key",
    401: "unauthorized",
    403: "blocked, forbidden, cross_site",
    404: "not_found",
    409: "already_finished, not_ready, conflict, cache_shared, idempotency_key_in_use",
    413: "request_entity_too_large, too_large",
    415: "unsupported_media_type",
    422: "invalid_parameters, invalid_webhook, webhook_url_refused, unsupported_format, corrupt_image, "
         "idempotency_key_reused, …",
    429: "rate_limited",
    503: "store_unavailable, queue_unavailable, cache_unavailable",
}

# Ids as the service makes them: documented so a client can tell them apart (and so that
# /deliveries/dead is never taken for a delivery id).
ID_PATTERNS = {
    "job_id": ("^[0-9a-f]{32}$", "3f2a9c0e6b1d4e8fa0c2b7d9e4f61a53"),
    "batch_id": ("^[0-9a-f]{32}$", "9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e"),
    "endpoint_id": ("^ep_[0-9a-f]{24}$", "ep_4c1e2d3f5a6b7c8d9e0f1a2b"),
    "delivery_id": ("^dlv_[0-9a-f]{32}$", "dlv_0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
    "key_id": ("^[0-9a-f]{16}$", "a1b2c3d4e5f60718"),
    "control_type": ("^(canny|tile|depth)$", "canny"),
}


# --- the document -------------------------------------------------------------------------------

def flask_path(rule: str) -> str:
    """``/api/v1/jobs/<job_id>`` (or ``<string:job_id>``) → ``/api/v1/jobs/{job_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _api_routes(app: Flask) -> Iterator[tuple[str, str, Callable[..., Any]]]:
    """(method, OpenAPI path, view) of every route under /api/v1."""
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                yield method.lower(), flask_path(rule.rule), app.view_functions[rule.endpoint]


def routes(app: Flask) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every JSON API route the app has."""
    return {(method, path) for method, path, _ in _api_routes(app)}


def published(app: Flask) -> list[Operation]:
    """The operation declared on each route under /api/v1, with the route's method and path."""
    return [replace(view.openapi_operation, method=method, path=path)  # type: ignore[attr-defined]
            for method, path, view in _api_routes(app) if hasattr(view, "openapi_operation")]


def build_spec(app: Flask) -> dict[str, Any]:
    operations = published(app)
    components = _components(operations)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pixelmill API",
            "version": "1",
            "summary": "Image-generation jobs: submit, follow, fetch results; webhooks, keys, cache.",
            "description": "Every error answers `{\"error\": {\"code\", \"message\"}}` with the status that fits. "
                           "With auth on, send an API key as `Authorization: Bearer pm_…` (or `X-API-Key`). "
                           "The same description as a page: /api/docs.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "tags": [{"name": name, "description": text} for name, text in TAGS.items()
                 if any(op.tag == name for op in operations)],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "pm_…",
                           "description": "an API key from POST /api/v1/keys "
                                          "(or `pixelmill keys create --tenant NAME`)"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": "the same key in an X-API-Key header"},
            },
        },
        "security": [{"bearer": []}, {"apiKeyHeader": []}],
    }


TAGS = {
    "jobs": "One image in, one result out: submit, follow, cancel, fetch.",
    "batches": "Many images with one set of parameters.",
    "webhooks": "Signed callbacks (Standard Webhooks), their deliveries and the dead-letter list.",
    "keys": "API keys of your tenant.",
    "cache": "The latent cache as your tenant sees it.",
    "models": "The model library: the checkpoints, LoRAs and ControlNets a diffusion job may name.",
    "service": "About the service itself.",
}


def spec_for(app: Flask) -> dict[str, Any]:
    """The document for ``app``, built once."""
    if EXTENSION not in app.extensions:
        app.extensions[EXTENSION] = build_spec(app)
    return app.extensions[EXTENSION]


def models_of(operations: list[Operation]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [ErrorResponse]
    for op in operations:
        for part in (op.body, op.ok[1]):
            if isinstance(part, Json):
                found.append(part.model)
        if isinstance(op.body, Multipart):
            found += [JobParams, SubmissionFields]
    return list(dict.fromkeys(found))


def _components(operations: list[Operation]) -> dict[str, Any]:
    models = models_of(operations)
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    return dict(sorted(top.get("$defs", {}).items()))


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(ErrorResponse)}}}


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "tags": [op.tag], "summary": op.summary}
    if op.description:
        out["description"] = op.description
    parameters = [_path_param(name) for name in re.findall(r"{([^}]+)}", op.path)]
    if op.query:
        parameters += _query_params(op.query)
    parameters += [_param(p) for p in op.params]
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = _request_body(op.body)
    status, what = op.ok
    success: dict[str, Any] = {"description": _success_text(what)}
    if isinstance(what, Json):
        media: dict[str, Any] = {"schema": _ref(what.model)}
        if what.example is not None:
            media["example"] = what.example() if callable(what.example) else what.example
        success["content"] = {"application/json": media}
    elif isinstance(what, Media):
        success["content"] = {what.media_type: {"schema": what.schema}}
    if op.headers:
        success["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                              for name, text in op.headers.items()}
    responses: dict[str, Any] = {str(status): success}
    errors = dict(op.errors) if op.public else {**op.errors, **{s: t for s, t in COMMON_ERRORS.items()
                                                                 if s not in op.errors}}
    for code, text in sorted(errors.items()):
        responses[str(code)] = _error_response(text)
        if code in (429, 503):
            responses[str(code)]["headers"] = {"Retry-After": {"description": "seconds to wait (when given)",
                                                               "schema": {"type": "integer"}}}
    out["responses"] = responses
    if op.public:
        out["security"] = []
    return out


def _success_text(what: Json | Media) -> str:
    if isinstance(what, Json):
        doc = vars(what.model).get("__doc__") or ""
        return doc.strip().splitlines()[0] if doc.strip() else f"a {what.model.__name__}"
    return what.description


def _path_param(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    example = None
    if name in ID_PATTERNS:
        schema["pattern"], example = ID_PATTERNS[name]
    param = {"name": name, "in": "path", "required": True, "schema": schema}
    if example:
        param["example"] = example
    return param


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", "")
        prop.pop("title", None)
        params.append({"name": name, "in": "query", "required": name in required, "schema": prop,
                       "description": " ".join(x for x in (description, constraints(prop)) if x)})
    return params


def _param(p: Param) -> dict[str, Any]:
    out = {"name": p.name, "in": p.location, "required": p.required, "schema": p.schema, "description": p.description}
    if p.example is not None:
        out["example"] = p.example
    return out


def _request_body(body: Json | Multipart) -> dict[str, Any]:
    if isinstance(body, Json):
        media: dict[str, Any] = {"schema": _ref(body.model)}
        if body.example is not None:
            media["example"] = body.example
        return {"required": body.required, "content": {"application/json": media}}
    content: dict[str, Any] = {"multipart/form-data": {
        "schema": upload_schema(body),
        "encoding": {body.field: {"contentType": "image/png, image/jpeg, image/webp"}},
    }}
    if body.json_example is not None:
        content["application/json"] = {"schema": json_submission_schema(body), "examples": {
            "by_url": {"summary": "the image by URL", "value": body.json_example}}}
    return {"required": True, "content": content}


def json_submission_schema(body: Multipart) -> dict[str, Any]:
    """The JSON form of a submission: ``field`` (an https URL or a data URI, or a list of them),
    ``SubmissionFields`` and each ``JobParams`` field as members of one object (``params`` may also
    hold the parameters as an object: members given beside it win)."""
    image = {"type": "string", "minLength": 1,
             "description": "an https:// URL (checked now, fetched on the io queue before the job runs; at most "
                            "3 redirects, public addresses only) or a data:image/png|jpeg|webp;base64, URI"}
    images = {"type": "array", "items": image, "minItems": 1, "description": "the images, one job each"}
    properties: dict[str, Any] = {body.field: images if body.many else image}
    for model in (SubmissionFields, JobParams):
        schema = model.model_json_schema(ref_template=REF)
        for name, prop in schema.get("properties", {}).items():
            prop = copy.deepcopy(prop)
            prop.pop("title", None)
            properties[name] = prop
    properties["params"] = {**_ref(JobParams), "description": "the parameters as one object (members given "
                                                              "beside it win)"}
    properties["webhook_events"] = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                                    "description": "event names, a list or comma-separated (default: every "
                                                   "job event; * for all)"}
    return {"type": "object", "required": [body.field], "properties": properties,
            "description": "the image(s) by URL or data URI, and the parameters"}


def upload_schema(body: Multipart) -> dict[str, Any]:
    """The multipart form: the file field, ``SubmissionFields`` and each ``JobParams`` field.

    Inlined (a form is flat), from the same models the handlers validate with.
    """
    image = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
             "description": "PNG, JPEG or WebP"}
    files = ({"type": "array", "items": image, "minItems": 1, "description": "the images, one file part each"}
             if body.many else image)
    properties: dict[str, Any] = {body.field: files}
    for model in (SubmissionFields, JobParams):
        schema = model.model_json_schema(ref_template=REF)
        for name, prop in schema.get("properties", {}).items():
            properties[name] = _form_field(prop)
    properties["params"]["contentMediaType"] = "application/json"
    properties["params"]["contentSchema"] = _ref(JobParams)
    return {"type": "object", "required": [body.field], "properties": properties,
            "description": "the image(s) and the parameters as form fields"}


def _form_field(prop: dict[str, Any]) -> dict[str, Any]:
    """A model field as a form field: a form cannot send null (leave the field out instead)."""
    prop = copy.deepcopy(prop)
    prop.pop("title", None)
    options = [o for o in prop.get("anyOf", ()) if o.get("type") != "null"]
    if "anyOf" in prop and len(options) == 1:
        del prop["anyOf"]
        prop = {**options[0], **prop}
        if prop.get("default", 0) is None:
            del prop["default"]
    return prop


def constraints(schema: dict[str, Any]) -> str:
    words = []
    for key, label in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"),
                       ("minLength", "length ≥"), ("maxLength", "length ≤"), ("pattern", "matches")):
        if key in schema:
            words.append(f"{label} {schema[key]}")
    if schema.get("default") is not None:
        words.append(f"default {json.dumps(schema['default'])}")
    return f"({', '.join(words)})" if words else ""


# --- the routes ---------------------------------------------------------------------------------

@bp.get(SPEC_PATH)
@operation("openapi", "service", "This description (OpenAPI 3.1)",
           ok=(200, Media("application/json", {"type": "object"}, "the OpenAPI document")), public=True)
def spec():
    return jsonify(spec_for(current_app))


@bp.get("/api/docs")
def docs():
    from web.api_docs import render_docs  # it imports this module: imported here, not at the top

    return render_docs(spec_for(current_app), base=request.host_url.rstrip("/"))
