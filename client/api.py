"""The Python client of pixelmill's JSON API (docs/client.md).

    from client import Client

    with Client("http://127.0.0.1:8000", api_key="pm_…") as pm:
        job = pm.submit("photo.jpg", style="sketch", size=512)   # bytes, a path, an https URL or a data URI
        job = pm.wait(job)
        pm.download(job, "sketch.png")

Every call answers a small dataclass (``Job``, ``Batch``, ``Event``) or raises ``ApiError`` with the
server's ``code`` and ``message`` (``ServerUnreachable`` when nothing answers). Calls are retried with
backoff on 429 (after ``Retry-After``), 503 and lost connections; a submission sends one
``Idempotency-Key`` (a uuid per logical submit) on every try, so a retry never makes a second job.
It runs on the same lower layer as ``pixelmill submit`` (``client.http.ApiClient``).
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import urllib3

from client.http import CONNECT_TIMEOUT_S, ApiClient, ApiError, ServerUnreachable, _raise_for
from client.sse import ServerEvent, events as sse_events, lines as sse_lines

TERMINAL = frozenset({"succeeded", "failed", "blocked", "canceled"})
STREAM_READ_TIMEOUT_S = 60.0  # the server sends a keepalive every 15 s
_SNIFF = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"RIFF", ".webp"))


@dataclass(frozen=True)
class Retry:
    """How calls are retried: ``attempts`` tries in all, waiting ``backoff_s`` × 2ⁿ (jittered, at
    most ``max_backoff_s``) between them, or what ``Retry-After`` says (up to ``max_wait_s``)."""

    attempts: int = 6
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_wait_s: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_wait_s)
        base = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        return base * (0.5 + random.random() / 2)


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True)
class Links:
    self: str
    page: str
    input: str
    result: str | None = None
    cancel: str | None = None
    batch: str | None = None


@dataclass(frozen=True)
class Job:
    """A job as the API shows it (``data``: the whole payload, fields added later included)."""

    id: str
    status: str
    stage: str | None
    batch_id: str | None
    input_name: str
    params: dict[str, Any]
    links: Links
    error: JobError | None
    source: dict[str, Any] | None
    created_at: float
    finished_at: float | None
    data: dict[str, Any] = field(repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> "Job":
        links = data.get("links") or {}
        error = data.get("error")
        return cls(id=data["id"], status=data["status"], stage=data.get("stage"), batch_id=data.get("batch_id"),
                   input_name=data.get("input_name", ""), params=data.get("params") or {},
                   links=Links(**{k: links.get(k) for k in Links.__dataclass_fields__ if k in links}),
                   error=JobError(code=error["code"], message=error["message"]) if error else None,
                   source=data.get("source"), created_at=data.get("created_at", 0.0),
                   finished_at=data.get("finished_at"), data=data)


@dataclass(frozen=True)
class Batch:
    id: str
    status: str  # running | done
    total: int
    done: int
    counts: dict[str, int]
    jobs: tuple[Job, ...]
    data: dict[str, Any] = field(repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.status == "done"

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> "Batch":
        return cls(id=data["id"], status=data["status"], total=data["total"], done=data["done"],
                   counts=data.get("counts") or {}, jobs=tuple(Job.from_payload(j) for j in data.get("jobs", ())),
                   data=data)


@dataclass(frozen=True)
class Event:
    """One server-sent event: ``type`` is its name (job, progress, preview, end …; for the tenant
    stream the webhook event type), ``data`` its parsed JSON, ``id`` the SSE id (a webhook-id)."""

    type: str
    data: Any
    id: str | None = None
    raw: str = field(default="", repr=False, compare=False)  # the data as sent (a webhook body, byte for byte)

    @property
    def job(self) -> Job | None:
        """The job of a ``job`` event."""
        return Job.from_payload(self.data) if self.type == "job" else None


JobRef = Job | str
Image = bytes | bytearray | str | os.PathLike


class Client:
    """pixelmill's JSON API: submit, batch, wait, events, download, cancel (docs/client.md)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 retry: Retry = Retry()) -> None:
        self.http = ApiClient(url, api_key=api_key)
        self.url = self.http.url
        self.retry = retry

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- submitting -------------------------------------------------------------------------------

    def submit(self, image: Image, /, *, webhook_url: str | None = None, webhook_events: Iterable[str] | None = None,
               deadline_s: float | None = None, idempotency_key: str | None = None, **params: Any) -> Job:
        """One job. ``image``: bytes, a path, an ``https://`` URL (fetched by the server) or a
        ``data:image/…;base64,`` URI; ``params``: the job's parameters (style, engine, prompt, size …)."""
        extra = _submission_fields(webhook_url, webhook_events, deadline_s)
        kind, value = _classify(image)
        if kind == "json":
            body = {"image": value, **params, **extra}
            response = self._send("POST", "/api/v1/jobs", json=body, idempotency_key=idempotency_key or _new_key())
        else:
            name, data = value
            response = self._send("POST", "/api/v1/jobs", idempotency_key=idempotency_key or _new_key(),
                                  files=[("image", (name, data, _mime(name)))],
                                  data={"params": json.dumps(params), **_form(extra)})
        return Job.from_payload(response.json())

    def batch(self, images: Iterable[Image], /, *, webhook_url: str | None = None,
              webhook_events: Iterable[str] | None = None, deadline_s: float | None = None,
              idempotency_key: str | None = None, **params: Any) -> Batch:
        """One batch: a job per image, one set of parameters. Files go as multipart; as soon as one
        image is a URL or a data URI, the batch goes as JSON (files become data URIs)."""
        classified = [_classify(image) for image in images]
        if not classified:
            raise ValueError("a batch needs at least one image")
        extra = _submission_fields(webhook_url, webhook_events, deadline_s)
        key = idempotency_key or _new_key()
        if any(kind == "json" for kind, _ in classified):
            values = [value if kind == "json" else _data_uri(*value) for kind, value in classified]
            response = self._send("POST", "/api/v1/batches", json={"images": values, **params, **extra},
                                  idempotency_key=key)
        else:
            files = [("images", (name, data, _mime(name))) for _, (name, data) in classified]
            response = self._send("POST", "/api/v1/batches", files=files, idempotency_key=key,
                                  data={"params": json.dumps(params), **_form(extra)})
        return Batch.from_payload(response.json())

    # --- following --------------------------------------------------------------------------------

    def fetch(self, job: JobRef) -> Job:
        return Job.from_payload(self._send("GET", f"/api/v1/jobs/{_id(job)}").json())

    def fetch_batch(self, batch: Batch | str) -> Batch:
        batch_id = batch.id if isinstance(batch, Batch) else batch
        return Batch.from_payload(self._send("GET", f"/api/v1/batches/{batch_id}").json())

    def wait(self, job: JobRef | Batch, *, timeout_s: float | None = None, poll_s: float = 0.25,
             max_poll_s: float = 2.0) -> Job | Batch:
        """Poll until the job (every job of a batch) has ended; ``TimeoutError`` after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        fetch = self.fetch_batch if isinstance(job, Batch) else self.fetch
        current = fetch(job)  # type: ignore[arg-type]
        interval = poll_s
        while not current.is_terminal:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{current.id} is still {current.status} after {timeout_s} s")
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
            interval = min(interval * 1.5, max_poll_s)
            current = fetch(current)  # type: ignore[arg-type]
        return current

    def events(self, job: JobRef) -> Iterator[Event]:
        """The job's server-sent events (``job`` snapshots, ``progress``, ``preview``), until ``end``.
        A dropped stream, or one the server ends after 15 minutes, is opened again (a fresh snapshot)."""
        path = f"/api/v1/jobs/{_id(job)}/events"
        while True:
            ended = None
            for event in self._stream(path):
                yield event
                if event.type == "end":
                    ended = event
            if ended is not None and (ended.data or {}).get("reason") != "timeout":
                return

    def tenant_events(self, *, on_open: Callable[[], None] | None = None) -> Iterator[Event]:
        """Every webhook event of your tenant as it happens (``GET /api/v1/events``): ``type`` the event
        type, ``id`` its webhook-id, ``raw`` the webhook body. Reconnects when the server ends the
        stream; ``on_open`` is called each time the stream is open (the server listens from then on)."""
        while True:
            for event in self._stream("/api/v1/events", on_open=on_open):
                if event.type != "end":
                    yield event

    def download(self, job: JobRef, path: str | os.PathLike) -> Path:
        """Save the result PNG of a succeeded job (``ApiError`` not_ready / blocked otherwise)."""
        response = self._send("GET", f"/api/v1/jobs/{_id(job)}/result", stream=True)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            with response, tmp.open("wb") as f:
                for chunk in response.iter_content(chunk_size=1 << 16):
                    f.write(chunk)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def cancel(self, job: JobRef) -> Job:
        """Cancel a job: a queued one stops at once, a running one at its next step. ``ApiError``
        already_finished when it had ended (unless it was this call's own retry that found it so)."""
        try:
            response = self._send("POST", f"/api/v1/jobs/{_id(job)}/cancel")
        except ApiError as e:
            if e.code == "already_finished" and getattr(e, "retried", False):
                return self.fetch(job)  # the first try did it; its answer was lost
            raise
        return Job.from_payload(response.json())

    # --- the transport ----------------------------------------------------------------------------

    def _stream(self, path: str, *, on_open: Callable[[], None] | None = None) -> Iterator[Event]:
        """The events of one stream, until the server ends it or the connection drops (then it
        just stops: the caller opens it again)."""
        response = self._send("GET", path, stream=True, headers={"Accept": "text/event-stream"},
                              timeout=(CONNECT_TIMEOUT_S, STREAM_READ_TIMEOUT_S))
        if on_open is not None:
            on_open()
        with response:
            try:
                for event in sse_events(sse_lines(response)):
                    yield _event(event)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
                time.sleep(self.retry.delay(1))  # dropped: reopened by the caller after a pause

    def _send(self, method: str, path: str, *, idempotency_key: str | None = None,
              **kwargs: Any) -> requests.Response:
        """One call with retries: on a lost connection, 429, 503 and a key still in use (409
        idempotency_key_in_use), waiting as ``Retry-After`` says or with backoff. A refusal raises
        ``ApiError`` (its ``retried`` says whether an earlier try of this call had been sent)."""
        headers = dict(kwargs.pop("headers", None) or {})
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.http._request(method, path, headers=headers, **kwargs)
            except ServerUnreachable:
                if attempt >= self.retry.attempts:
                    raise
                time.sleep(self.retry.delay(attempt))
                continue
            if _retryable(response) and attempt < self.retry.attempts:
                retry_after = _retry_after(response)
                response.close()
                time.sleep(self.retry.delay(attempt, retry_after))
                continue
            try:
                _raise_for(response)
            except ApiError as e:
                e.retried = attempt > 1  # type: ignore[attr-defined]
                raise
            return response


def _retryable(response: requests.Response) -> bool:
    if response.status_code in (429, 503):
        return True
    if response.status_code == 409 and "idempotency_key_in_use" in response.text[:500]:
        return True
    return False


def _retry_after(response: requests.Response) -> float | None:
    value = (response.headers.get("Retry-After") or "").strip()
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _event(event: ServerEvent) -> Event:
    try:
        data = json.loads(event.data)
    except ValueError:
        data = event.data
    return Event(type=event.event, data=data, id=event.id, raw=event.data)


def _classify(image: Image) -> tuple[str, Any]:
    """("json", an https URL or data URI) or ("file", (name, bytes))."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return "file", (f"image{_suffix(data)}", data)
    if hasattr(image, "read"):
        data = image.read()  # type: ignore[union-attr]
        name = os.path.basename(str(getattr(image, "name", ""))) or f"image{_suffix(data)}"
        return "file", (name, data)
    if isinstance(image, str):
        head = image[:16].lower()
        if head.startswith(("https://", "http://", "data:")):
            return "json", image
    path = Path(image)
    return "file", (path.name, path.read_bytes())


def _suffix(data: bytes) -> str:
    for magic, suffix in _SNIFF:
        if data.startswith(magic):
            return suffix
    return ""


def _data_uri(name: str, data: bytes) -> str:
    media = _mime(name)
    if not media.startswith("image/"):
        media = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}.get(_suffix(data), "image/png")
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def _mime(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _submission_fields(webhook_url: str | None, webhook_events: Iterable[str] | None,
                       deadline_s: float | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if webhook_url:
        fields["webhook_url"] = webhook_url
    if webhook_events:
        fields["webhook_events"] = list(webhook_events)
    if deadline_s is not None:
        fields["deadline_s"] = deadline_s
    return fields


def _form(fields: dict[str, Any]) -> dict[str, str]:
    """Submission fields as multipart form fields (a list of events as a JSON list)."""
    return {name: json.dumps(value) if isinstance(value, list) else str(value) for name, value in fields.items()}


def _id(job: JobRef) -> str:
    return job.id if isinstance(job, Job) else job


def _new_key() -> str:
    return f"pixelmill-client-{uuid.uuid4()}"
