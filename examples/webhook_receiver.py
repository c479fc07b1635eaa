"""A pixelmill webhook receiver (docs/client.md): verifies each delivery with the endpoint's secret and
acts on each event once, deduplicating on webhook-id (a retry or a redelivery carries the same id).

    PIXELMILL_WEBHOOK_SECRET=whsec_… flask --app examples/webhook_receiver.py run --port 5000
"""

import os
import threading

from flask import Flask, request

from client import WebhookVerificationError, verify_webhook


def make_app(secret: str) -> Flask:
    app = Flask(__name__)
    app.config.update(WEBHOOK_SECRET=secret, SEEN=set(), HANDLED=[], DUPLICATES=[])
    lock = threading.Lock()

    @app.post("/hook")
    def hook():
        try:  # the raw body, exactly as it came: re-serialised JSON would not match the signature
            event = verify_webhook(request.get_data(), request.headers, app.config["WEBHOOK_SECRET"])
        except WebhookVerificationError as e:
            return {"error": str(e)}, 400
        webhook_id = request.headers["webhook-id"]
        with lock:  # in production: a unique key in your database, in the same transaction as the work
            duplicate = webhook_id in app.config["SEEN"]
            app.config["SEEN"].add(webhook_id)
        if duplicate:
            app.config["DUPLICATES"].append(webhook_id)
            return "", 204  # handled before: say so, do nothing
        app.config["HANDLED"].append(event)  # act here, e.g. fetch event["data"]["links"]["result"]
        return "", 204

    return app


app = make_app(os.environ.get("PIXELMILL_WEBHOOK_SECRET", ""))
