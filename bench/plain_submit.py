"""The baseline of bench/submit_load.py: the least a submit can do, as a plain Flask app — decode
and re-encode the upload with Pillow, write it under its sha256, send one Celery message — run
under the web server's gunicorn settings (stack/supervisor.py web_argv)."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path

from celery import Celery
from flask import Flask, jsonify, request
from PIL import Image

app = Flask(__name__)
celery = Celery("plain", broker=os.environ.get("PLAIN_REDIS_URL", "redis://127.0.0.1:6379/15"))
BLOBS = Path(os.environ.get("PLAIN_DATA_DIR", "/tmp/plain-submit"))
BLOBS.mkdir(parents=True, exist_ok=True)


@app.get("/healthz")
def healthz():
    return {"ok": True}


@app.post("/api/v1/jobs")
def create_job():
    with Image.open(request.files["image"].stream) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    ref = hashlib.sha256(data).hexdigest()
    (BLOBS / f"{ref}.png").write_bytes(data)
    job_id = uuid.uuid4().hex
    celery.send_task("plain.encode", args=(job_id,), queue="plain")
    return jsonify(id=job_id, style=request.form.get("style", "")), 202
