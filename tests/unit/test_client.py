"""The Python client without a pixelmill server: retries reuse one Idempotency-Key across a lost
connection, 503 and 429 (Retry-After honoured), errors carry the server's code, SSE parsing, and
verify_webhook against signatures made by the standardwebhooks package."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest
from standardwebhooks import Webhook

from client import ApiError, Client, Retry, WebhookVerificationError, verify_webhook
from client.sse import ServerEvent, _line_end, events
from client.webhooks import new_secret, sign_webhook

JOB = {"id": "a" * 32, "status": "queued", "stage": "encode", "batch_id": None, "input_name": "image.png",
       "params": {"style": "sketch"}, "error": None, "created_at": 1.0, "finished_at": None,
       "links": {"self": "/api/v1/jobs/x", "page": "/jobs/x", "input": "/api/v1/jobs/x/input"},
       "source": {"kind": "upload"}, "some_later_field": 1}


class Script:
    """Answers for POST /api/v1/jobs, one per call: "drop" closes the connection unanswered."""

    def __init__(self, answers: list) -> None:
        self.answers, self.seen = list(answers), []


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script([])

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            script.seen.append((time.monotonic(), dict(self.headers)))
            answer = script.answers.pop(0)
            if answer == "drop":
                self.close_connection = True
                return
            status, headers, body = answer
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {**headers, "Content-Type": "application/json",
                                "Content-Length": str(len(data))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


def error(code: str, message: str = "no") -> dict:
    return {"error": {"code": code, "message": message}}


def test_retries_send_the_same_idempotency_key(server, tmp_path):
    url, script = server
    script.answers = ["drop", (503, {}, error("queue_unavailable")), (429, {"Retry-After": "1"}, error("rate_limited")),
                      (409, {"Retry-After": "0"}, error("idempotency_key_in_use")), (202, {}, JOB)]
    with Client(url, api_key="pm_test", retry=Retry(backoff_s=0.01)) as pm:
        job = pm.submit(b"\x89PNG\r\n\x1a\nfake", style="sketch")
    assert job.id == JOB["id"] and job.status == "queued" and job.links.input.endswith("/input")
    assert job.error is None and job.data["some_later_field"] == 1
    keys = {headers["Idempotency-Key"] for _, headers in script.seen}
    assert len(script.seen) == 5 and len(keys) == 1 and next(iter(keys)).startswith("pixelmill-client-")
    assert all(headers["Authorization"] == "Bearer pm_test" for _, headers in script.seen)
    assert script.seen[3][0] - script.seen[2][0] >= 0.95  # Retry-After: 1 was honoured


def test_each_logical_submit_has_its_own_key(server):
    url, script = server
    script.answers = [(202, {}, JOB), (202, {}, JOB)]
    with Client(url) as pm:
        pm.submit("https://images.example.com/a.png")
        pm.submit("data:image/png;base64,iVBORw0KGgo=")
    first, second = (headers["Idempotency-Key"] for _, headers in script.seen)
    assert first != second


def test_errors_carry_the_servers_code_and_message(server):
    url, script = server
    script.answers = [(422, {}, error("unsupported_format", "this file is a PDF document"))]
    with Client(url) as pm, pytest.raises(ApiError) as err:
        pm.submit(b"%PDF-1.4")
    assert (err.value.status, err.value.code, err.value.message) == (422, "unsupported_format",
                                                                      "this file is a PDF document")


def test_giving_up_raises_the_last_answer(server):
    url, script = server
    script.answers = [(503, {}, error("store_unavailable"))] * 3
    with Client(url, retry=Retry(attempts=3, backoff_s=0.01)) as pm, pytest.raises(ApiError) as err:
        pm.submit(b"x")
    assert err.value.code == "store_unavailable" and len(script.seen) == 3


def test_server_sent_events_are_parsed_as_they_come():
    text = ("retry: 3000\n\n: keepalive\n\nevent: job\ndata: {\"a\":1}\n\nid: msg_1\nevent: job.completed\r\n"
            "data: {\"b\":\r\ndata: 2}\r\n\r\ndata: plain\n\n")
    parsed = list(events(iter(text.replace("\r\n", "\n").split("\n"))))
    assert parsed == [ServerEvent("job", '{"a":1}'), ServerEvent("job.completed", '{"b":\n2}', "msg_1"),
                      ServerEvent("message", "plain")]
    assert _line_end(b"ab\r") is None and _line_end(b"ab\r\ncd") == (2, 4) and _line_end(b"ab\rcd") == (2, 3)


def test_verify_webhook_accepts_the_packages_signatures_and_refuses_the_rest():
    secret, body = new_secret(), '{"type":"job.completed","data":{"id":"x"}}'
    headers = sign_webhook(body, secret=secret, msg_id="msg_1")
    assert Webhook(secret).verify(body, headers)["type"] == "job.completed"  # the reference package agrees
    assert verify_webhook(body.encode(), {k.title(): v for k, v in headers.items()}, secret)["data"] == {"id": "x"}
    for bad_body, bad_headers, bad_secret in [
        (body + " ", headers, secret),
        (body, headers, new_secret()),
        (body, {**headers, "webhook-timestamp": str(int(time.time()) - 600)}, secret),
        (body, {**headers, "webhook-signature": "garbage"}, secret),
        (body, {k: v for k, v in headers.items() if k != "webhook-id"}, secret),
        (body, headers, ""),
    ]:
        with pytest.raises(WebhookVerificationError):
            verify_webhook(bad_body, bad_headers, bad_secret)
