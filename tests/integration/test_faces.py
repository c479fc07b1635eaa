"""Face restoration through the API on the session's real workers and the tiny library (its restorer
and its YuNet-compatible detector, set in tests/conftest.py): a face_restore job succeeds and reports
its faces on the job, its page and its webhook; without the models configured, face_restore is
refused at submit — API, JSON and the upload form — with a 422 that names the setting."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from tasks.settings import Settings
from tests.conftest import encode, routes_to, wait_for_job
from tests.integration.test_webhooks import Receiver, eventually
from workers.tiny_faces import draw_tiny_face

pytestmark = pytest.mark.integration

# The style engine at strength 0 passes the image through, so the face drawn for the tiny detector
# reaches enhance as it was drawn (on its 32-px grid: the image is already at its working size).
KEEP = {"style": "cartoon", "style_strength": 0.0, "size": 512}


def _portrait() -> bytes:
    image = np.full((384, 512, 3), 110, np.uint8)
    image[:, :, 2] = 150
    draw_tiny_face(image, x=96, y=128)
    draw_tiny_face(image, x=320, y=160)
    return encode(image)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_a_face_restore_job_reports_its_faces_on_the_job_the_page_and_the_webhook(client, workers,
                                                                                  tiny_model) -> None:
    receiver = Receiver()
    try:
        image = _portrait()
        response = client.post("/api/v1/jobs", content_type="multipart/form-data",
                               data={"image": (io.BytesIO(image), "portrait.png"), "face_restore": "0.7",
                                     "webhook_url": receiver.url(), "webhook_events": "job.completed", **KEEP})
        assert response.status_code == 202, response.get_json()
        job = wait_for_job(lambda i: client.get(f"/api/v1/jobs/{i}").get_json(), response.get_json()["id"],
                           timeout_s=120)
        assert job["status"] == "succeeded", job
        assert job["params"]["face_restore"] == 0.7
        assert job["faces"] == {"found": 2, "restored": 2, "weight": 0.7, "restorer": "tiny-restorer",
                                "detector": "tiny-yunet"}
        moved = np.abs(_pixels(client.get(job["links"]["result"]).data) - _pixels(image)).sum(axis=2) > 0
        assert moved[140:210, 110:180].any() and moved[175:245, 335:405].any()  # both faces were restored
        assert not moved[:, 450:].any() and not moved[300:].any()  # nothing away from them changed

        (delivered,) = eventually(lambda: receiver.of(job_id=job["id"], type_="job.completed"),
                                  what="the job.completed webhook")
        assert delivered.payload["data"]["faces"] == job["faces"]
        page = client.get(f"/jobs/{job['id']}").get_data(as_text=True)
        assert re.search(r"Faces: <strong>2</strong> found, <strong>2</strong> restored", page)
        models = {m["name"]: m for m in client.get("/api/v1/models").get_json()["models"] if m["kind"] == "face"}
        assert (models["tiny-restorer"]["role"], models["tiny-yunet"]["role"]) == ("restorer", "detector")
    finally:
        receiver.close()
        for endpoint in client.get("/api/v1/webhooks").get_json()["webhooks"]:
            if endpoint["url"] == receiver.url():
                client.delete(f"/api/v1/webhooks/{endpoint['id']}")


def test_a_job_without_face_restore_records_no_faces(client, workers) -> None:
    response = client.post("/api/v1/jobs", content_type="multipart/form-data",
                           data={"image": (io.BytesIO(_portrait()), "portrait.png"), **KEEP, "sharpen": "true"})
    job = wait_for_job(lambda i: client.get(f"/api/v1/jobs/{i}").get_json(), response.get_json()["id"],
                       timeout_s=120)
    assert job["status"] == "succeeded" and "faces" not in job


@pytest.mark.parametrize("missing", ["face_restorer", "face_detector"])
def test_face_restore_without_the_models_is_refused_naming_the_setting(redis_server, tiny_model, missing) -> None:
    from web import create_app

    app = create_app(Settings(routes=routes_to("faces-parked"), **{missing: ""}))  # nothing it queues runs
    app.config["TESTING"] = True
    client = app.test_client()
    setting = f"PIXELMILL_{missing.upper()}"
    form = client.post("/api/v1/jobs", content_type="multipart/form-data",
                       data={"image": (io.BytesIO(_portrait()), "p.png"), "face_restore": "0.5"})
    assert form.status_code == 422, form.get_json()
    assert form.get_json()["error"]["code"] == "face_restore_unavailable"
    assert setting in form.get_json()["error"]["message"]

    data_uri = "data:image/png;base64," + base64.b64encode(_portrait()).decode()
    as_json = client.post("/api/v1/jobs", data=json.dumps({"image": data_uri, "face_restore": 1}),
                          content_type="application/json")
    assert as_json.status_code == 422 and setting in as_json.get_json()["error"]["message"]

    page = client.get("/").get_data(as_text=True)
    assert 'name="face_restore"' in page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    upload = client.post("/submit", content_type="multipart/form-data",
                         data={"csrf_token": csrf, "_form": "1", "face_restore": "0.5",
                               "images": (io.BytesIO(_portrait()), "p.png")})
    assert upload.status_code == 422 and setting in upload.get_data(as_text=True)

    without = client.post("/api/v1/jobs", content_type="multipart/form-data",
                          data={"image": (io.BytesIO(_portrait()), "p.png"), "face_restore": "", "size": "64"})
    assert without.status_code == 202  # an empty field is no face_restore: nothing to refuse


@pytest.mark.parametrize("value", ["1.5", "-0.1", "lots"])
def test_face_restore_out_of_range_is_a_422(client, value) -> None:
    response = client.post("/api/v1/jobs", content_type="multipart/form-data",
                           data={"image": (io.BytesIO(_portrait()), "p.png"), "face_restore": value})
    assert response.status_code == 422 and "face_restore" in response.get_json()["error"]["message"]
