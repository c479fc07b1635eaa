"""Live job and batch pages over Server-Sent Events (docs/live.md).

``GET /api/v1/events`` streams the tenant's webhook events (the bodies webhooks carry), for
``pixelmill webhooks listen`` and anyone who would rather hold a stream than expose a receiver.

``GET /api/v1/jobs/<id>/events`` and ``GET /api/v1/batches/<id>/events`` stream ``text/event-stream``:
a snapshot first (the payload the JSON API returns), then each change as it commits, a
``: keepalive`` comment every KEEPALIVE_S, and ``end`` once the job (every job of the batch)
has ended. The same streams answer under ``/jobs/<id>/events`` and ``/batches/<id>/events`` for
the pages: a browser's EventSource cannot send an API key, only the login session cookie.

A web process holds one Redis subscription (web/live_hub.py) however many viewers it
serves; each viewer is a thread blocked on its own queue (gunicorn gthread, stack/supervisor.py).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, request

from tasks.errors import JobNotFound, PixelmillError
from tasks.events import JobEvent
from tasks.jobs import Batch, Job
from tasks.live import channel_for
from web.live_hub import RESYNC, LiveHub, Viewer, pubsub_client
from tasks.present import batch_payload, job_payload
from tasks.services import Services
from tasks.store import JobStore
from tasks.webhooks.dispatch import payload_body
from web.extensions import base_url, current_tenant, fetch_batch, fetch_job, pixelmill
from web.openapi import Media, operation
from web.webhooks import webhook_info

bp = Blueprint("live", __name__)
log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0  # under the usual 30–60 s idle timeouts of proxies and load balancers
RETRY_MS = 3000  # how long EventSource waits before reconnecting after a dropped stream
MAX_STREAM_S = 15 * 60  # then `end` (reason "timeout"): the client reconnects and gets a fresh snapshot
READY_TIMEOUT_S = 2.0  # wait this long for the subscription before reading the snapshot
# Streams one web process serves at once, below gunicorn's --threads (stack/supervisor.py) so that
# pages and API calls always find a thread; beyond it a viewer gets 503 and the page polls.
MAX_STREAMS_PER_PROCESS = 48
PREVIEW_MIMETYPE = "image/png"


class TooManyViewers(PixelmillError):
    code = "too_many_viewers"
    status = 503
    retry_after = 10


# --- routes ----------------------------------------------------------------------------------

@bp.get("/api/v1/jobs/<job_id>/events")
@bp.get("/jobs/<job_id>/events")
@operation("jobEvents", "jobs", "Follow a job as server-sent events",
           ok=(200, Media("text/event-stream", {"type": "string"},
                          "server-sent events: `job` (the job as showJob shows it: first a snapshot, then each "
                          "change), `progress` ({job_id, stage, step, steps}), `preview` (a new preview image), "
                          "`end` ({reason, status}) once the job has ended; `: keepalive` comments between")),
           description="For browsers, the same stream answers at /jobs/{job_id}/events with the login session.",
           errors={404: "no such job", 503: "this server streams to as many viewers as it can (too_many_viewers): "
                                            "poll showJob or retry (see Retry-After)"})
def job_events(job_id: str):
    job = fetch_job(job_id)  # tenant check: another tenant's job is not found
    store = pixelmill.services.store
    viewer = None if job.status.is_terminal() else _watch([channel_for("job", job_id)])
    try:
        job = store.fetch(job_id)  # read after subscribing: nothing between this and the stream is lost
        snapshot = _job_snapshot(store, job)
    except BaseException:
        if viewer is not None:
            viewer.close()
        raise
    return _stream(_job_stream(viewer, store, job, snapshot, base=base_url(), previews=_preview_base()), viewer)


@bp.get("/api/v1/batches/<batch_id>/events")
@bp.get("/batches/<batch_id>/events")
@operation("batchEvents", "batches", "Follow a batch as server-sent events",
           ok=(200, Media("text/event-stream", {"type": "string"},
                          "server-sent events: `batch` (a snapshot, then the batch's counts as they change), "
                          "`job` (a job of the batch that changed), `progress`, `preview`, and `end` once every "
                          "job has ended")),
           errors={404: "no such batch", 503: "too many viewers on this server (too_many_viewers): poll "
                                              "showBatch or retry (see Retry-After)"})
def batch_events(batch_id: str):
    batch, jobs = fetch_batch(batch_id)
    viewer = None if all(j.status.is_terminal() for j in jobs) else _watch([channel_for("batch", batch_id)])
    try:
        batch, jobs = fetch_batch(batch_id)
        snapshot = {**batch_payload(batch, jobs, base_url=base_url()), **webhook_info(batch.id)}
    except BaseException:
        if viewer is not None:
            viewer.close()
        raise
    store = pixelmill.services.store
    return _stream(_batch_stream(viewer, store, batch, jobs, snapshot, base=base_url(), previews=_preview_base()),
                   viewer)


@bp.get("/api/v1/events")
@operation("tenantEvents", "webhooks", "Follow your webhook events as server-sent events",
           ok=(200, Media("text/event-stream", {"type": "string"},
                          "server-sent events, one per webhook event of your tenant as it happens: `id:` its "
                          "webhook-id, `event:` its type (job.started, job.completed, job.failed, job.blocked, "
                          "job.canceled, batch.completed), `data:` the payload exactly as a webhook delivery's "
                          "body; `: keepalive` comments between, and `end` ({reason: timeout}) after 15 minutes "
                          "(reconnect)")),
           description="What `pixelmill webhooks listen` follows to forward events to a local receiver, signed "
                       "with a secret of its own. Events are sent as they happen, not stored for this stream: "
                       "what happens while no stream is open is not replayed (webhook endpoints are the "
                       "durable way).",
           errors={503: "this server streams to as many viewers as it can (too_many_viewers): retry (see "
                        "Retry-After)"})
def tenant_events():
    viewer = _watch([channel_for("tenant", current_tenant())])
    return _stream(_tenant_stream(viewer, pixelmill.services), viewer)


@bp.get("/api/v1/jobs/<job_id>/preview.png")
@bp.get("/jobs/<job_id>/preview.png")
@operation("jobPreview", "jobs", "The latest live preview of a running diffusion job",
           ok=(200, Media(PREVIEW_MIMETYPE, {"type": "string", "contentMediaType": PREVIEW_MIMETYPE},
                          "the preview (PNG)")),
           errors={404: "no such job, or no preview now (one exists only while a diffusion job generates)"})
def job_preview(job_id: str):
    """The latest live preview of a running diffusion job (kept a short while only)."""
    job = fetch_job(job_id)
    png = None if job.status.is_terminal() else pixelmill.services.store.fetch_preview(job_id)
    if png is None:
        raise JobNotFound(f"job {job_id} has no live preview now (one exists only while a diffusion job generates)")
    response = Response(png, mimetype=PREVIEW_MIMETYPE)
    response.headers["Cache-Control"] = "no-store"
    return response


# --- the hub of this process -------------------------------------------------------------------

_hubs: dict[tuple[int, str], LiveHub] = {}
_hubs_lock = threading.Lock()


def live_hub() -> LiveHub:
    """This process's hub for the app's Redis (a new one after a fork: threads do not survive it)."""
    url = pixelmill.services.settings.redis_url
    with _hubs_lock:
        hub = _hubs.get((os.getpid(), url))
        if hub is None:
            hub = _hubs[(os.getpid(), url)] = LiveHub(pubsub_client(url))
        return hub


def _watch(channels: list[str]) -> Viewer:
    hub = live_hub()
    if hub.viewer_count() >= MAX_STREAMS_PER_PROCESS:
        raise TooManyViewers(f"this server streams to {MAX_STREAMS_PER_PROCESS} viewers at most; "
                             "poll the JSON API or try again shortly")
    viewer = hub.watch(channels)
    viewer.wait_ready(READY_TIMEOUT_S)  # if Redis is slow, go on: the keepalive re-read catches up
    return viewer


def _preview_base() -> str:
    """Preview links follow the stream's own path family (API key or page session)."""
    return f"{base_url()}/api/v1" if request.path.startswith("/api/") else base_url()


# --- the streams -------------------------------------------------------------------------------

def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _stream(events: Iterator[str], viewer: Viewer | None) -> Response:
    response = Response(events, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    if viewer is not None:
        response.call_on_close(viewer.close)  # also when the stream never started
    return response


def _job_snapshot(store: JobStore, job: Job) -> dict[str, Any]:
    """What GET /api/v1/jobs/<id> returns."""
    payload = job_payload(job, progress=store.fetch_progress(job.id), base_url=base_url())
    return {**payload, **webhook_info(job.id)}


def _job_stream(viewer: Viewer | None, store: JobStore, job: Job, snapshot: dict[str, Any], *, base: str,
                previews: str) -> Iterator[str]:
    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield sse("job", snapshot)
        for message in _messages(viewer, done=lambda: job.status.is_terminal()):  # ended before the snapshot
            if isinstance(message, str):
                yield message
                continue
            if message is RESYNC:
                current, progress = _reread(store, job.id), _reread_progress(store, job.id)
            elif message["type"] == "job":
                current, progress = Job.from_dict(message["record"]), None
            else:
                if (event := _side_event(message, previews)) and not job.status.is_terminal():
                    yield event
                continue
            if current is None or current.updated_at <= job.updated_at:
                continue  # older than what this viewer has: the snapshot, or a re-read, was newer
            job = current
            yield sse("job", job_payload(job, progress=progress or None, base_url=base))
            if job.status.is_terminal():
                break
        yield sse("end", {"reason": "finished" if job.status.is_terminal() else "timeout", "status": job.status.value})
    finally:
        if viewer is not None:
            viewer.close()


def _tenant_stream(viewer: Viewer, rt: Services) -> Iterator[str]:
    """Each event published on the tenant's channel (tasks.live), as the webhook body it makes."""
    try:
        yield f"retry: {RETRY_MS}\n\n"
        for message in _messages(viewer):
            if isinstance(message, str):
                yield message
                continue
            if message is RESYNC:
                continue  # pub/sub lost messages: events are not stored for this stream, nothing to re-read
            try:
                event = JobEvent(**message)
                body = payload_body(rt, event)
            except Exception:  # noqa: BLE001 - one bad event (its batch expired …) must not end the stream
                log.warning("live: could not render a tenant event %.200r", message, exc_info=True)
                continue
            yield f"id: {event.id}\nevent: {event.type}\ndata: {body}\n\n"
        yield sse("end", {"reason": "timeout"})
    finally:
        viewer.close()


def _batch_stream(viewer: Viewer | None, store: JobStore, batch: Batch, jobs: list[Job], snapshot: dict[str, Any],
                  *, base: str, previews: str) -> Iterator[str]:
    members = {job.id: job for job in jobs}
    links = snapshot["links"]
    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield sse("batch", snapshot)
        for message in _messages(viewer, done=lambda: all(j.status.is_terminal() for j in members.values())):
            if isinstance(message, str):
                yield message
                continue
            if message is RESYNC:
                changed = [j for j in (_reread(store, i) for i, m in members.items() if not m.status.is_terminal()) if j]
            elif message["type"] == "job":
                changed = [Job.from_dict(message["record"])]
            else:
                member = members.get(message.get("job_id", ""))
                if (event := _side_event(message, previews)) and member and not member.status.is_terminal():
                    yield event
                continue
            ended = False
            for job in changed:
                known = members.get(job.id)
                if known is None or job.updated_at <= known.updated_at:
                    continue
                members[job.id] = job
                ended |= job.status.is_terminal()
                yield sse("job", job_payload(job, base_url=base))
            if ended:
                yield sse("batch", _batch_summary(batch, list(members.values()), links))
        finished = all(j.status.is_terminal() for j in members.values())
        yield sse("end", {"reason": "finished" if finished else "timeout"})
    finally:
        if viewer is not None:
            viewer.close()


def _messages(viewer: Viewer | None, *, done: Callable[[], bool] | None = None) -> Iterator[dict[str, Any] | str]:
    """Messages for one viewer; on every quiet KEEPALIVE_S the keepalive comment (a str, to pass
    on) and then ``RESYNC`` (a cheap re-read catches anything pub/sub lost). Stops after
    MAX_STREAM_S, when ``done()``, or at once with no viewer (the subject had already ended)."""
    if viewer is None:
        return
    deadline = time.monotonic() + MAX_STREAM_S
    while time.monotonic() < deadline and not (done and done()):
        message = viewer.get(timeout=min(KEEPALIVE_S, max(0.0, deadline - time.monotonic())))
        if message is None:
            yield ": keepalive\n\n"
            message = RESYNC
        yield message


def _side_event(message: dict[str, Any], previews: str) -> str | None:
    """progress and preview messages, forwarded as they are (no Redis read)."""
    if message["type"] == "progress":
        return sse("progress", {key: message[key] for key in ("job_id", "stage", "step", "steps")})
    if message["type"] == "preview":
        version = int(message["at"] * 1000)
        return sse("preview", {"job_id": message["job_id"], "step": message.get("step"), "steps": message.get("steps"),
                               "url": f"{previews}/jobs/{message['job_id']}/preview.png?v={version}"})
    return None


def _reread(store: JobStore, job_id: str) -> Job | None:
    try:
        return store.fetch(job_id)
    except Exception:  # noqa: BLE001 - Redis away or the job expired: the stream goes on, the next tick retries
        return None


def _reread_progress(store: JobStore, job_id: str) -> dict[str, Any] | None:
    try:
        return store.fetch_progress(job_id) or None
    except Exception:  # noqa: BLE001 - as above
        return None


def _batch_summary(batch: Batch, jobs: list[Job], links: dict[str, str]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status.value] = counts.get(job.status.value, 0) + 1
    done = sum(1 for job in jobs if job.status.is_terminal())
    return {"id": batch.id, "status": "done" if done == len(jobs) else "running", "total": len(jobs), "done": done,
            "counts": counts, "links": links}
