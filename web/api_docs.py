"""The API docs page (``GET /api/docs``): the OpenAPI document of ``web.openapi`` rendered on the
server with the site's own template and stylesheet — operations by tag, their parameters, bodies
and answers, a curl example each, and the schemas. No JavaScript, nothing from a CDN."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import current_app, render_template
from markupsafe import Markup, escape

from web.openapi import ERROR_CODES, ID_PATTERNS, Json, Media, Multipart, Operation, constraints, published


def render_docs(document: dict[str, Any], *, base: str) -> str:
    return render_template("api_docs.html", spec=document, base=base, sections=docs_sections(document, base=base),
                           components=_component_rows(document), error_codes=ERROR_CODES, inline_code=inline_code)


def inline_code(text: str) -> Markup:
    """`this` → <code>this</code>, everything else escaped."""
    parts = str(escape(text)).split("`")
    return Markup("".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)))


def docs_sections(document: dict[str, Any], *, base: str) -> list[dict[str, Any]]:
    """The operations grouped by tag, each with its rows ready for the template."""
    by_id = {op.operation_id: op for op in published(current_app)}
    sections = []
    for tag in document["tags"]:
        ops = []
        for path, methods in document["paths"].items():
            for method, body in methods.items():
                if tag["name"] in body["tags"]:
                    ops.append(_docs_operation(path, method, body, by_id[body["operationId"]], base=base))
        sections.append({"name": tag["name"], "description": tag["description"], "operations": ops})
    return sections


def _docs_operation(path: str, method: str, body: dict[str, Any], op: Operation, *, base: str) -> dict[str, Any]:
    params = [{"name": p["name"], "in": p["in"], "type": type_label(p["schema"]), "required": p.get("required"),
               "description": p.get("description", "") or constraints(p["schema"])}
              for p in body.get("parameters", [])]
    request_body = None
    if "requestBody" in body:
        media_type, media = next(iter(body["requestBody"]["content"].items()))
        schema = media["schema"]
        request_body = {"media_type": media_type, "required": body["requestBody"].get("required", False),
                        "model": _ref_name(schema), "fields": [] if "$ref" in schema else _fields(schema),
                        "example": json.dumps(media["example"], indent=2) if "example" in media else None}
    responses = []
    for status, answer in body["responses"].items():
        media_type, media = next(iter(answer.get("content", {}).items()), (None, {}))
        schema = media.get("schema")
        responses.append({"status": status, "description": answer["description"], "media_type": media_type,
                          "model": _ref_name(schema) if schema else None,
                          "headers": sorted(answer.get("headers", {}))})
    examples = [json.dumps(media["example"], indent=2) for answer in body["responses"].values()
                for media in answer.get("content", {}).values() if "example" in media]
    return {"id": body["operationId"], "method": method.upper(), "path": path, "summary": body["summary"],
            "description": body.get("description", ""), "params": params, "body": request_body,
            "responses": responses, "answer_example": examples[0] if examples else None,
            "public": body.get("security") == [], "curl": curl_example(op, base=base)}


def curl_example(op: Operation, *, base: str) -> str:
    path = re.sub(r"{([^}]+)}", lambda m: ID_PATTERNS.get(m.group(1), ("", m.group(1)))[1], op.path)
    parts = ["curl -sS"]
    if op.method not in ("get", "post") or (op.method == "post" and op.body is None):
        parts.append(f"-X {op.method.upper()}")
    if not op.public:
        parts.append('-H "Authorization: Bearer $PIXELMILL_API_KEY"')
    if isinstance(op.body, Multipart):
        parts += [f"-F {name}={value}" for name, value in op.body.curl_fields]
    elif isinstance(op.body, Json) and op.body.example is not None:
        parts += ["-H 'Content-Type: application/json'", f"-d '{json.dumps(op.body.example)}'"]
    if isinstance(op.ok[1], Media) and op.ok[1].media_type.startswith("image/"):
        parts.append("-o result.png")
    if isinstance(op.ok[1], Media) and op.ok[1].media_type == "text/event-stream":
        parts.append("-N")
    parts.append(f"{base}{path}")
    return " \\\n     ".join(parts)


def _component_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, schema in document["components"]["schemas"].items():
        rows.append({"name": name, "description": schema.get("description", ""),
                     "enum": schema.get("enum"), "fields": _fields(schema)})
    return rows


def _fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", ()))
    return [{"name": name, "type": type_label(prop), "required": name in required,
             "description": " ".join(x for x in (prop.get("description", ""), constraints(prop)) if x)}
            for name, prop in schema.get("properties", {}).items()]


def _ref_name(schema: dict[str, Any] | None) -> str | None:
    if schema and "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    return None


def type_label(schema: dict[str, Any]) -> str:
    """A short, readable type: ``Job``, ``integer``, ``string | null``, ``list of Endpoint``."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(type_label(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {type_label(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_label(schema['additionalProperties'])}"
    if schema.get("format") == "binary":
        return "file"
    return kind if isinstance(kind, str) else " | ".join(kind)


