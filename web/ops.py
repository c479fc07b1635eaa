"""Operations endpoints: liveness and readiness."""

from __future__ import annotations

import hmac
import logging

import redis
from flask import Blueprint, Response, jsonify, request
from prometheus_client.exposition import choose_encoder

from tasks.heartbeat import fetch_restarts
from web.extensions import pixelmill

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz():
    """Alive and able to reach Redis (the job store), with the supervisor's restarts. Errors are
    logged, not echoed: this answers anyone who asks."""
    try:
        restarts = fetch_restarts(pixelmill.services.redis)
    except redis.RedisError:
        log.warning("healthz: Redis unreachable", exc_info=True)
        return jsonify(status="unavailable", redis="unreachable"), 503
    return jsonify(status="ok", redis="ok", restarts=restarts)


@bp.get("/metrics")
def metrics():
    """Prometheus metrics, read from Redis and the broker at scrape time (web.prometheus)."""
    from tasks.celery_app import app as celery_app
    from web.prometheus import registry_for

    settings = pixelmill.services.settings
    token = settings.metrics_token
    if settings.auth_enabled and not token:  # every tenant's figures: never open on a server that has tenants
        return Response("metrics are off: auth is on and no PIXELMILL_METRICS_TOKEN is set; set one and scrape with "
                        "'Authorization: Bearer <PIXELMILL_METRICS_TOKEN>'\n", status=403,
                        content_type="text/plain; charset=utf-8")
    if token and not hmac.compare_digest(request.headers.get("Authorization", "").encode(), f"Bearer {token}".encode()):
        return Response("send the metrics token as 'Authorization: Bearer <PIXELMILL_METRICS_TOKEN>'\n", status=401,
                        content_type="text/plain; charset=utf-8", headers={"WWW-Authenticate": "Bearer"})
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(registry_for(pixelmill.services, celery=celery_app)), content_type=content_type)
