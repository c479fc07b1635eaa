"""Operations endpoints: liveness and readiness."""

from __future__ import annotations

import redis
from flask import Blueprint, jsonify

from web.extensions import pixelmill

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """Alive and able to reach Redis (the job store)."""
    try:
        pixelmill.runtime.redis.ping()
    except redis.RedisError as e:
        return jsonify(status="unavailable", redis=f"unreachable: {e}"), 503
    return jsonify(status="ok", redis="ok")
