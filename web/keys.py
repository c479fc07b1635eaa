"""API keys of the current tenant: list, create (the key is shown once), revoke."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, jsonify, request

from web.extensions import current_tenant, pixelmill

bp = Blueprint("keys", __name__, url_prefix="/api/v1/keys")


@bp.get("")
def list_keys():
    keys = pixelmill.runtime.tenants.list_keys(current_tenant())
    return jsonify(keys=[asdict(key) for key in keys])


@bp.post("")
def create_key():
    name = (request.get_json(silent=True) or {}).get("name", "") or request.form.get("name", "")
    key, plaintext = pixelmill.runtime.tenants.create_key(tenant=current_tenant(), name=str(name)[:100])
    return jsonify({**asdict(key), "key": plaintext, "note": "store this key now: it is not shown again"}), 201


@bp.delete("/<key_id>")
def revoke_key(key_id: str):
    key = pixelmill.runtime.tenants.revoke(tenant=current_tenant(), key_id=key_id)
    return jsonify(asdict(key))
