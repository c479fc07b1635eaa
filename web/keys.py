"""API keys of the current tenant: list, create (the key is shown once), revoke."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from web.extensions import current_tenant, pixelmill
from web.forms import read_json_body

bp = Blueprint("keys", __name__, url_prefix="/api/v1/keys")


class KeyCreate(BaseModel):
    """POST /api/v1/keys (JSON or form fields)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=100, description="a label to tell keys apart, e.g. where it is used")


@bp.get("")
def list_keys():
    keys = pixelmill.services.tenants.list_keys(current_tenant())
    return jsonify(keys=[asdict(key) for key in keys])


@bp.post("")
def create_key():
    body = KeyCreate.model_validate(read_json_body(request))
    key, plaintext = pixelmill.services.tenants.create_key(tenant=current_tenant(), name=body.name)
    return jsonify({**asdict(key), "key": plaintext, "note": "store this key now: it is not shown again"}), 201


@bp.delete("/<key_id>")
def revoke_key(key_id: str):
    key = pixelmill.services.tenants.revoke(tenant=current_tenant(), key_id=key_id)
    return jsonify(asdict(key))
