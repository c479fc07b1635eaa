"""The OpenAPI 3.1 description of the JSON API: ``GET /api/v1/openapi.json``, and the same
rendered as a page at ``GET /api/docs`` (web/api_docs.py).

One table, ``OPERATIONS``, describes every route under /api/v1: its parameters, body and
answers. Bodies and answers are pydantic models — the very ones the handlers validate with
(``JobParams``, ``EndpointCreate``, ``KeyCreate`` …) and those of ``web.schemas``, which
describe the payloads ``tasks.present`` and friends build — turned into components with
``model_json_schema``. A route is published only while the app has it, so a route described
ahead of its code stays out until it lands; and a test fails when a route under /api/v1 has
no row here. **Adding a route: add one ``Operation`` to ``OPERATIONS``** (and, if it answers
with a new shape, its model to ``web.schemas``).

Why a small generator and not a library: spectree, flask-openapi3 and apiflask each want to
own the handlers — typed view signatures or their own Blueprint/Flask classes, and their own
request parsing and error shape. Here the submissions are multipart with a ``params`` JSON
field *and* per-field overrides, errors already have one shape, and models already exist;
adopting a library would mean rewriting every handler to gain what ~300 lines give.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tasks.jobs import Job as JobRecord
from tasks.jobs import JobParams, JobStatus
from tasks.present import job_payload
from tasks.webhooks.models import EndpointCreate
from web import schemas
from web.forms import MAX_DEADLINE_S, DeliveryListQuery, JobListQuery, SubmissionFields
from web.keys import KeyCreate
from web.webhooks import RotateRequest

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
    """A multipart submission: image file(s) in ``field``, the parameters beside them."""

    field: str
    many: bool = False


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
    method: str
    path: str  # OpenAPI form: /api/v1/jobs/{job_id}
    operation_id: str
    tag: str
    summary: str
    ok: tuple[int, Json | Media | None]  # the success status and what it carries
    description: str = ""
    body: Json | Multipart | None = None
    query: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()  # headers and query parameters beyond ``query``
    errors: dict[int, str] = field(default_factory=dict)  # status → when it happens
    headers: dict[str, str] = field(default_factory=dict)  # response headers of the success answer
    public: bool = False  # answers without an API key
    curl_fields: tuple[tuple[str, str], ...] = ()  # multipart fields shown in the curl example


# Errors every authenticated operation may answer.
COMMON_ERRORS = {
    401: "no valid API key (only when PIXELMILL_AUTH_ENABLED is on)",
    503: "the job store (Redis) or the queue is unavailable right now: retry in a minute",
}
ERROR_CODES = {  # status → codes the error body may carry, for the docs
    400: "bad_request",
    401: "unauthorized",
    403: "blocked",
    404: "not_found",
    409: "already_finished, not_ready, conflict, cache_shared",
    413: "request_entity_too_large, too_large",
    415: "unsupported_media_type",
    422: "invalid_parameters, invalid_webhook, webhook_url_refused, unsupported_format, corrupt_image, …",
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
}

_SUBMIT_ERRORS = {
    400: "no image, an unknown parameter, a params field that is not a JSON object, a bad deadline_s",
    413: "the file or the whole request is too large",
    415: "the body is not multipart/form-data",
    422: "a parameter out of range, an image refused (format, size, corrupt, decompression bomb), "
         "or a webhook_url refused",
    429: "over the per-minute submission limit or the cap on unfinished jobs (see Retry-After)",
}
_CANCEL_AFTER = Param("Cancel-After", "header", {"type": "number", "minimum": 1, "maximum": MAX_DEADLINE_S},
                      "seconds the job may take in all (the same as the deadline_s field)", example=600)
_DOWNLOAD = Param("download", "query", {"type": "string", "enum": ["1"]},
                  "1: served as an attachment (Content-Disposition) rather than inline")
_PNG = Media("image/png", {"type": "string", "contentMediaType": "image/png"}, "the PNG image")


OPERATIONS: tuple[Operation, ...] = (
    # --- jobs ---
    Operation("post", "/api/v1/jobs", "createJob", "jobs", "Submit one image",
              ok=(202, Json(schemas.JobCreated)), body=Multipart("image"), params=(_CANCEL_AFTER,),
              description="Validates the upload and the parameters, stores the image and queues the job; it never "
                          "waits for a worker. Parameters go as form fields one by one, or together as a JSON "
                          "object in the `params` field (fields sent one by one win).",
              errors=_SUBMIT_ERRORS, headers={"Location": "the job in the API"},
              curl_fields=(("image", "@photo.jpg"), ("style", "watercolor"), ("upscale", "2"))),
    Operation("get", "/api/v1/jobs", "listJobs", "jobs", "Your most recent jobs",
              ok=(200, Json(schemas.JobList)), query=JobListQuery, errors={422: "limit is not an integer in range"}),
    Operation("get", "/api/v1/jobs/{job_id}", "showJob", "jobs", "A job: status, stages, progress, audit, links",
              ok=(200, Json(schemas.JobDetail, example=lambda: example_job())),
              errors={404: "no such job (or it is another tenant's)"},
              description="Poll this (or follow the events stream, or use a webhook) until `status` is terminal: "
                          "succeeded, failed, blocked or canceled."),
    Operation("post", "/api/v1/jobs/{job_id}/cancel", "cancelJob", "jobs", "Cancel a job",
              ok=(200, Json(schemas.Job)),
              description="A queued job stops at once, a running one at its next step.",
              errors={404: "no such job", 409: "the job already ended (already_finished)"}),
    Operation("get", "/api/v1/jobs/{job_id}/result", "jobResult", "jobs", "The result image",
              ok=(200, _PNG), params=(_DOWNLOAD,),
              errors={403: "the safety audit blocked this result: it is never served (blocked)",
                      404: "no such job", 409: "the job has not succeeded (yet) (not_ready)"}),
    Operation("get", "/api/v1/jobs/{job_id}/input", "jobInput", "jobs", "The normalised input image",
              ok=(200, _PNG), params=(_DOWNLOAD,), errors={404: "no such job"}),
    Operation("get", "/api/v1/jobs/{job_id}/events", "jobEvents", "jobs", "Follow a job as server-sent events",
              ok=(200, Media("text/event-stream", {"type": "string"},
                             "server-sent events: `job` (the job as showJob shows it: first a snapshot, then each "
                             "change), `progress` ({job_id, stage, step, steps}), `preview` (a new preview image), "
                             "`end` ({reason, status}) once the job has ended; `: keepalive` comments between")),
              description="For browsers, the same stream answers at /jobs/{job_id}/events with the login session.",
              errors={404: "no such job", 503: "this server streams to as many viewers as it can (too_many_viewers): "
                                               "poll showJob or retry (see Retry-After)"}),
    Operation("get", "/api/v1/jobs/{job_id}/preview.png", "jobPreview", "jobs",
              "The latest live preview of a running diffusion job",
              ok=(200, Media("image/png", {"type": "string", "contentMediaType": "image/png"}, "the preview (PNG)")),
              errors={404: "no such job, or no preview now (one exists only while a diffusion job generates)"}),
    # --- batches ---
    Operation("post", "/api/v1/batches", "createBatch", "batches", "Submit several images with one set of parameters",
              ok=(202, Json(schemas.BatchCreated)), body=Multipart("images", many=True), params=(_CANCEL_AFTER,),
              description="Every file is validated before any job is written: one bad file refuses the whole "
                          "batch, and its message starts with that file's name.",
              errors=_SUBMIT_ERRORS, headers={"Location": "the batch in the API"},
              curl_fields=(("images", "@front.jpg"), ("images", "@back.jpg"), ("style", "product"))),
    Operation("get", "/api/v1/batches/{batch_id}", "showBatch", "batches", "A batch and its jobs",
              ok=(200, Json(schemas.BatchDetail)), errors={404: "no such batch"}),
    Operation("get", "/api/v1/batches/{batch_id}/events", "batchEvents", "batches",
              "Follow a batch as server-sent events",
              ok=(200, Media("text/event-stream", {"type": "string"},
                             "server-sent events: `batch` (a snapshot, then the batch's counts as they change), "
                             "`job` (a job of the batch that changed), `progress`, `preview`, and `end` once every "
                             "job has ended")),
              errors={404: "no such batch", 503: "too many viewers on this server (too_many_viewers): poll "
                                                 "showBatch or retry (see Retry-After)"}),
    # --- webhooks ---
    Operation("post", "/api/v1/webhooks", "createWebhook", "webhooks", "Add a standing webhook endpoint",
              ok=(201, Json(schemas.EndpointWithSecret)),
              body=Json(EndpointCreate, {"url": "https://example.com/hooks/pixelmill",
                                         "events": ["job.completed", "job.failed"], "description": "CMS import"}),
              description="The URL is checked now (SSRF guard: public addresses only unless allowed). The "
                          "signing secret is in this answer only.",
              errors={400: "the body is not a JSON object",
                      422: "a field out of range, an unknown event, or the URL refused"},
              headers={"Location": "the endpoint in the API"}),
    Operation("get", "/api/v1/webhooks", "listWebhooks", "webhooks", "Your webhook endpoints",
              ok=(200, Json(schemas.EndpointList))),
    Operation("get", "/api/v1/webhooks/{endpoint_id}", "showWebhook", "webhooks", "A webhook endpoint",
              ok=(200, Json(schemas.Endpoint)), errors={404: "no such endpoint"}),
    Operation("delete", "/api/v1/webhooks/{endpoint_id}", "deleteWebhook", "webhooks", "Delete a webhook endpoint",
              ok=(200, Json(schemas.EndpointDeleted)), errors={404: "no such endpoint"}),
    Operation("post", "/api/v1/webhooks/{endpoint_id}/rotate", "rotateWebhookSecret", "webhooks",
              "Rotate an endpoint's signing secret",
              ok=(200, Json(schemas.EndpointWithSecret)),
              body=Json(RotateRequest, {"overlap_seconds": 3600}, required=False),
              description="Deliveries carry both signatures until the old secret expires, so receivers can "
                          "switch without dropping any.",
              errors={400: "the body is not a JSON object", 404: "no such endpoint",
                      422: "overlap_seconds out of range"}),
    Operation("post", "/api/v1/webhooks/{endpoint_id}/enable", "enableWebhook", "webhooks",
              "Enable an endpoint again (after a 410 disabled it)",
              ok=(200, Json(schemas.Endpoint)), errors={404: "no such endpoint"}),
    Operation("get", "/api/v1/webhooks/{endpoint_id}/deliveries", "listWebhookDeliveries", "webhooks",
              "Deliveries to an endpoint", ok=(200, Json(schemas.DeliveryList)), query=DeliveryListQuery,
              errors={404: "no such endpoint", 422: "limit is not an integer in range"}),
    Operation("get", "/api/v1/deliveries/dead", "listDeadLetters", "webhooks",
              "The dead-letter list: deliveries that ran out of tries",
              ok=(200, Json(schemas.DeliveryList)), query=DeliveryListQuery,
              errors={422: "limit is not an integer in range"}),
    Operation("get", "/api/v1/deliveries/{delivery_id}", "showDelivery", "webhooks", "A delivery and its attempts",
              ok=(200, Json(schemas.DeliveryDetail)), errors={404: "no such delivery"}),
    Operation("post", "/api/v1/deliveries/{delivery_id}/redeliver", "redeliver", "webhooks",
              "Send a delivery again (same webhook-id, so receivers dedupe)",
              ok=(202, Json(schemas.DeliveryDetail)),
              errors={404: "no such delivery",
                      409: "it is already pending, or its endpoint was deleted or is disabled (conflict)"}),
    # --- keys ---
    Operation("get", "/api/v1/keys", "listKeys", "keys", "Your API keys (never the keys themselves)",
              ok=(200, Json(schemas.ApiKeyList))),
    Operation("post", "/api/v1/keys", "createKey", "keys", "Create an API key",
              ok=(201, Json(schemas.ApiKeyCreated)), body=Json(KeyCreate, {"name": "ci"}, required=False),
              description="The key is in this answer only; only its hash is stored.",
              errors={400: "the body is not a JSON object",
                      422: "name longer than 100 characters, or an unknown field"}),
    Operation("delete", "/api/v1/keys/{key_id}", "revokeKey", "keys", "Revoke an API key",
              ok=(200, Json(schemas.ApiKey)), errors={404: "no such key"}),
    # --- cache ---
    Operation("get", "/api/v1/cache", "showCache", "cache", "The latent cache: your entries, counters, policy",
              ok=(200, Json(schemas.Cache))),
    Operation("delete", "/api/v1/cache", "clearCache", "cache", "Clear your cache entries",
              ok=(200, Json(schemas.CacheCleared)),
              errors={409: "the cache is shared between tenants: one tenant cannot clear it (cache_shared)",
                      503: "the cache's Redis is unavailable (cache_unavailable)"}),
    # --- service ---
    Operation("get", "/api/v1/stats", "showStats", "service", "Service figures: queues, jobs, cache",
              ok=(200, Json(schemas.Stats))),
    Operation("get", SPEC_PATH, "openapi", "service", "This description (OpenAPI 3.1)",
              ok=(200, Media("application/json", {"type": "object"}, "the OpenAPI document")), public=True),
)


# --- the document -------------------------------------------------------------------------------

def flask_path(rule: str) -> str:
    """``/api/v1/jobs/<job_id>`` (or ``<string:job_id>``) → ``/api/v1/jobs/{job_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def routes(app: Flask) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every JSON API route the app has."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            for method in rule.methods or ():
                if method not in {"HEAD", "OPTIONS"}:
                    found.add((method.lower(), flask_path(rule.rule)))
    return found


def published(app: Flask) -> list[Operation]:
    """The operations whose route the app has (a row described ahead of its code waits for it)."""
    present = routes(app)
    return [op for op in OPERATIONS if (op.method, op.path) in present]


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
    "service": "About the service itself.",
}


def spec_for(app: Flask) -> dict[str, Any]:
    """The document for ``app``, built once."""
    if EXTENSION not in app.extensions:
        app.extensions[EXTENSION] = build_spec(app)
    return app.extensions[EXTENSION]


def models_of(operations: list[Operation]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [schemas.ErrorResponse]
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
    defs = top.get("$defs", {})
    for name, schema in defs.items():
        if _is_response_model(name):
            schema.pop("additionalProperties", None)  # clients ignore fields added later
    return dict(sorted(defs.items()))


def _is_response_model(name: str) -> bool:
    model = getattr(schemas, name, None)
    return isinstance(model, type) and issubclass(model, BaseModel) and model.__module__ == schemas.__name__


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(schemas.ErrorResponse)}}}


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


def _success_text(what: Json | Media | None) -> str:
    if isinstance(what, Json):
        doc = vars(what.model).get("__doc__") or ""
        return doc.strip().splitlines()[0] if doc.strip() else f"a {what.model.__name__}"
    if isinstance(what, Media):
        return what.description
    return "done"


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
    return {"required": True, "content": {"multipart/form-data": {
        "schema": upload_schema(body),
        "encoding": {body.field: {"contentType": "image/png, image/jpeg, image/webp"}},
    }}}


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


def example_job() -> dict[str, Any]:
    """A job half-way through, as showJob answers: made by the real presenter, so it cannot drift."""
    at = 1767225600.0  # fixed, so the document is the same on every build
    job = JobRecord.create(tenant="local", params=JobParams(style="watercolor", upscale=2, seed=1234),
                           input_ref="0" * 64 + ".png", input_name="photo.jpg", deadline_s=3600)
    job.id, job.created_at, job.updated_at, job.expires_at = ID_PATTERNS["job_id"][1], at, at + 1.2, at + 3600
    job.status = JobStatus.GENERATING
    encode = job.stages["encode"]
    encode.started_at, encode.finished_at, encode.seconds, encode.attempts = at + 0.1, at + 0.9, 0.8, 1
    encode.done, encode.queue, encode.worker = True, "cpu", "cpu-1@host"
    generate = job.stages["generate"]
    generate.started_at, generate.attempts, generate.queue, generate.worker = at + 1.0, 1, "cpu", "cpu-1@host"
    progress = {"stage": "generate", "step": 3, "steps": 10, "at": int(at + 1.2)}
    return {**job_payload(job, progress=progress, base_url="https://pixelmill.example"), "webhook": None,
            "deliveries": []}


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
def spec():
    return jsonify(spec_for(current_app))


@bp.get("/api/docs")
def docs():
    from web.api_docs import render_docs  # the page reads this module's table: imported here, not at the top

    return render_docs(spec_for(current_app), base=request.host_url.rstrip("/"))
