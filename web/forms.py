"""Reading uploads and parameters out of a multipart request."""

from __future__ import annotations

import json
from typing import Any

from flask import Request
from pydantic import ValidationError

from tasks.errors import PixelmillError
from tasks.jobs import JobParams
from tasks.submit import Upload

PARAM_FIELDS = frozenset(JobParams.model_fields)
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
    for name, value in request.form.items():
        if name == "params" or value == "":
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


def read_uploads(request: Request, *, field: str, max_files: int) -> list[Upload]:
    files = [f for f in request.files.getlist(field) if f and f.filename is not None]
    if not files:
        raise BadRequest(f"no image uploaded: send the file in a multipart field named {field!r}")
    if len(files) > max_files:
        raise BadRequest(f"{len(files)} files sent; at most {max_files} per batch")
    return [Upload(name=f.filename or "upload", data=f.read()) for f in files]


__all__ = ["BadRequest", "ValidationError", "read_params", "read_uploads"]
