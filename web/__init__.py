"""The Flask app factory."""

from __future__ import annotations

import logging

from flask import Flask

from tasks.settings import Settings, get_settings
from web import api, auth, cache_api, errors, keys, ops, ui, webhook_pages, webhooks
from web.extensions import pixelmill


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["PIXELMILL_SETTINGS"] = settings
    pixelmill.init_app(app, settings)
    errors.init_app(app)
    auth.init_app(app, settings)
    app.register_blueprint(ui.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(cache_api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(keys.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(webhook_pages.bp)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return app
