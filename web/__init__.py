"""The Flask app factory."""

from __future__ import annotations

import logging

from flask import Flask

from tasks.settings import Settings, get_settings
from web import api, auth, cache_api, errors, keys, ops, ui, webhook_pages, webhooks
from web import models_api
from web import dashboard
from web import forms
from web import live
from web import openapi
from web import security
from web.extensions import pixelmill


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["PIXELMILL_SETTINGS"] = settings
    pixelmill.init_app(app, settings)
    errors.init_app(app)
    security.init_app(app, settings)  # Host and same-origin checks: before auth and every other hook
    forms.init_body_limits(app, max_upload_request=settings.max_request_bytes)  # before any hook reads a body
    auth.init_app(app, settings)
    app.register_blueprint(ui.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(cache_api.bp)
    app.register_blueprint(models_api.bp)  # /api/v1/models: the model library
    app.register_blueprint(ops.bp)
    app.register_blueprint(keys.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(webhook_pages.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(live.bp)  # Server-Sent Events: /api/v1/jobs/<id>/events, …
    app.register_blueprint(openapi.bp)  # /api/v1/openapi.json and /api/docs
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return app
