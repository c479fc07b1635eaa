"""API keys of the current tenant: list, create (the key is shown once), revoke."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, Field

from tasks.present import Timestamp, View
from web.extensions import current_tenant, pixelmill
from web.forms import read_json_body
from web.openapi import Json, operation

bp = Blueprint("keys", __name__, url_prefix="/api/v1/keys")


class KeyCreate(BaseModel):
    """POST /api/v1/keys (JSON or form fields)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=100, description="a label to tell keys apart, e.g. where it is used")


class ApiKey(View):
    id: str
    tenant: str
    name: str
    created_at: Timestamp
    revoked_at: Timestamp | None


class ApiKeyCreated(ApiKey):
    """The new key: the only time it is shown."""

    key: str = Field(description="pm_…: send it as 'Authorization: Bearer pm_…'; shown only now")
    note: str


class ApiKeyList(View):
    keys: list[ApiKey]


@bp.get("")
@operation("listKeys", "keys", "Your API keys (never the keys themselves)", ok=(200, Json(ApiKeyList)))
def list_keys():
    keys = pixelmill.services.tenants.list_keys(current_tenant())
    return ApiKeyList(keys=[asdict(key) for key in keys])


@bp.post("")
@operation("createKey", "keys", "Create an API key", ok=(201, Json(ApiKeyCreated)),
           body=Json(KeyCreate, {"name": "ci"}, required=False),
           description="The key is in this answer only; only its hash is stored.",
           errors={400: "the body is not a JSON object", 422: "name longer than 100 characters, or an unknown field"})
def create_key():
    body = KeyCreate.model_validate(read_json_body(request))
    key, plaintext = pixelmill.services.tenants.create_key(tenant=current_tenant(), name=body.name)
    return ApiKeyCreated(**asdict(key), key=plaintext, note="store this key now: it is not shown again")


@bp.delete("/<key_id>")
@operation("revokeKey", "keys", "Revoke an API key", ok=(200, Json(ApiKey)), errors={404: "no such key"})
def revoke_key(key_id: str):
    key = pixelmill.services.tenants.revoke(tenant=current_tenant(), key_id=key_id)
    return ApiKey(**asdict(key))
