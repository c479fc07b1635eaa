"""API keys of the current tenant: list, create (the key is shown once), revoke.

Only an admin key creates keys over HTTP, and never while auth is off: then every web page its
user opens could ask the local service for a key that stays valid once auth is turned on. An
operator makes keys with `pixelmill keys create --tenant T [--admin]`. A key made by a key never
outlives it (tasks/tenants.py). Revoking takes an admin key, or the key itself."""

from __future__ import annotations

import time
from dataclasses import asdict

from flask import Blueprint, g, request
from pydantic import BaseModel, ConfigDict, Field

from tasks.present import Timestamp, View
from tasks.tenants import KeyForbidden, require_admin
from web.extensions import current_tenant, pixelmill
from web.forms import read_json_body
from web.openapi import Json, operation

bp = Blueprint("keys", __name__, url_prefix="/api/v1/keys")


class KeyCreate(BaseModel):
    """POST /api/v1/keys (JSON or form fields)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=100, description="a label to tell keys apart, e.g. where it is used")
    admin: bool = Field(False, description="the new key may create (and revoke) keys too")
    expires_in_s: int | None = Field(None, gt=0, le=10 * 365 * 86400,
                                     description="the key is refused this long from now (never later than the "
                                                 "key creating it); unset: when the creating key expires, if ever")


class ApiKey(View):
    id: str
    tenant: str
    name: str
    created_at: Timestamp
    revoked_at: Timestamp | None
    admin: bool = Field(description="may create and revoke the tenant's keys")
    expires_at: Timestamp | None = Field(description="refused from then on; null: never")
    created_by: str | None = Field(description="the id of the key that created it (null: an operator); "
                                               "it is refused once that key is revoked or expired")


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
           body=Json(KeyCreate, {"name": "ci", "expires_in_s": 2592000}, required=False),
           description="Takes an admin key; the new key is in this answer only (only its hash is stored), "
                       "expires no later than the key that created it and is refused once that key is.",
           errors={400: "the body is not a JSON object",
                   403: "not an admin key, or auth is off (then: `pixelmill keys create`)",
                   422: "name longer than 100 characters, or an unknown field"})
def create_key():
    settings = pixelmill.services.settings
    if not settings.auth_enabled:
        raise KeyForbidden("keys are not made over HTTP while auth is off (any web page could ask for one): "
                           f"run `pixelmill keys create --tenant {settings.default_tenant}` (add --admin for a key "
                           "that may create keys), then turn auth on with PIXELMILL_AUTH_ENABLED=1")
    require_admin(g.api_key, tenant=current_tenant())
    body = KeyCreate.model_validate(read_json_body(request))
    expires_at = time.time() + body.expires_in_s if body.expires_in_s else None
    key, plaintext = pixelmill.services.tenants.create_key(tenant=current_tenant(), name=body.name, admin=body.admin,
                                                           expires_at=expires_at, creator=g.api_key)
    return ApiKeyCreated(**asdict(key), key=plaintext, note="store this key now: it is not shown again")


@bp.delete("/<key_id>")
@operation("revokeKey", "keys", "Revoke an API key", ok=(200, Json(ApiKey)),
           description="An admin key revokes any key of its tenant, another key only itself. The keys a "
                       "revoked key created are refused from then on too.",
           errors={403: "another key than this one, and this is not an admin key", 404: "no such key"})
def revoke_key(key_id: str):
    key = pixelmill.services.tenants.revoke(tenant=current_tenant(), key_id=key_id, by=g.get("api_key"))
    return ApiKey(**asdict(key))
