"""Input images that are not file uploads (JSON submissions, docs/api.md):

- a ``data:image/…;base64,`` URI is decoded at submit and then validated exactly like an upload
  (format, byte and pixel limits, decompression bombs): a bad one is refused at once (4xx);
- an ``https://`` URL is checked at submit by the outbound guard (``safety.fetch``: the webhooks'
  SSRF rules, https only) — a refused address is 422 at once — and the job is written without an
  input. Its first task, ``pixelmill.fetch_input`` on the io queue (where webhooks already go out;
  the web never waits on a remote server), fetches it under the guard again (DNS may have changed),
  hop by hop through at most 3 redirects, with a byte cap while reading, validates it like an
  upload, stores it and only then enqueues the chain. A failure fails the job with
  ``input_unreachable``, ``input_too_large`` or ``input_not_image``.

The job records where its input came from (``Job.source``), never the data itself.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
from typing import Any
from urllib.parse import unquote, urlsplit

import redis

from safety.errors import InputRejected
from safety.fetch import FetchFailed, check_input_url, fetch
from safety.outbound import OutboundRefused, UnresolvableHost
from safety.validate import validate_image
from tasks.celery_app import app
from tasks.errors import InvalidTransition, JobNotFound, PixelmillError
from tasks.jobs import Job
from tasks.pipeline import FETCH_TASK, enqueue
from tasks.services import Services, get_services
from tasks.submit import RemoteInput, Upload, decode_slots, upload_limits

log = logging.getLogger(__name__)

_DATA_URI = re.compile(r"data:(image/[a-z0-9.+-]+)((?:;[a-z0-9_.-]+=[^;,]*)*);base64,", re.IGNORECASE)
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp"}
_WHITESPACE = re.compile(rb"\s+")
# What a refused image (safety.validate's codes) fails a fetched job with.
_REFUSED_AS = {"too_large": "input_too_large", "too_many_pixels": "input_too_large",
               "decompression_bomb": "input_too_large"}
FAILURE_CODES = ("input_unreachable", "input_too_large", "input_not_image")


class BadImageValue(PixelmillError):
    code = "bad_request"
    status = 400


class InputUrlRefused(PixelmillError):
    """The outbound guard refuses the URL (a private address, not https, credentials …)."""

    code = "input_url_refused"
    status = 422


class InputUnreachable(PixelmillError):
    code = "input_unreachable"
    status = 422


# --- at submit -----------------------------------------------------------------------------------

def read_image_value(value: Any, *, rt: Services, name: str) -> Upload | RemoteInput:
    """A JSON ``image`` value: an https URL (checked, not fetched) or a data URI (decoded).
    ``name`` is how messages call it (``image``, ``images[2]``) and names the input."""
    if not isinstance(value, str):
        raise BadImageValue(f"{name} must be a string: an https:// URL or a data:image/…;base64, URI")
    head = value[:16].lstrip().lower()
    if head.startswith("data:"):
        return parse_data_uri(value.strip(), name=name, max_bytes=rt.settings.max_upload_bytes)
    if head.startswith(("https://", "http://")) or "://" in head:
        return remote_input(value, rt=rt, name=name)
    raise BadImageValue(f"{name} must be an https:// URL or a data:image/…;base64, URI "
                        "(or send the file itself as multipart/form-data)")


def parse_data_uri(value: str, *, name: str, max_bytes: int) -> Upload:
    """``data:image/png;base64,…`` → the bytes, as an upload (validated later like one)."""
    match = _DATA_URI.match(value, 0, 300)
    if match is None:
        raise BadImageValue(f"{name}: a data URI must look like data:image/png;base64,… (an image media type, "
                            "base64-encoded)")
    payload = value[match.end():].encode("ascii", "replace")
    if len(payload) > 4 * math.ceil(max_bytes / 3) + 1024:  # before decoding: a bound on the decoded size
        raise InputRejected("too_large", f"{name}: the data URI holds more than {max_bytes} bytes, the limit for "
                                         "an image (PIXELMILL_MAX_UPLOAD_BYTES)", status=413)
    try:
        data = base64.b64decode(_WHITESPACE.sub(b"", payload), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadImageValue(f"{name}: the data URI is not valid base64 ({e})") from e
    media_type = match.group(1).lower()
    stem = name.replace("[", "-").replace("]", "")
    return Upload(name=f"{stem}{_EXTENSIONS.get(media_type, '')}", data=data,
                  source={"kind": "data_uri", "media_type": media_type})


def remote_input(url: str, *, rt: Services, name: str) -> RemoteInput:
    """An input URL past the outbound guard now (422 if refused): the fetch re-checks every hop."""
    url = url.strip()
    try:
        check_input_url(url, allow_private=rt.settings.input_allow_private)
    except UnresolvableHost as e:
        raise InputUnreachable(f"{name}: {e}") from e
    except OutboundRefused as e:
        raise InputUrlRefused(f"{name}: {e}") from e
    last = unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])[:200]
    return RemoteInput(name=last or urlsplit(url).hostname or name, url=url)


# --- on the io queue -------------------------------------------------------------------------------

@app.task(name=FETCH_TASK, autoretry_for=(redis.ConnectionError, redis.TimeoutError), retry_backoff=True,
          max_retries=5)
def fetch_input(job_id: str) -> None:
    run_fetch(get_services(), job_id)


def run_fetch(rt: Services, job_id: str, *, fetcher=fetch) -> Job | None:
    """Fetch, validate and store a URL job's input, then enqueue its chain; or fail the job.
    Idempotent: a job that already has its input only gets its chain enqueued (again)."""
    try:
        job = rt.store.fetch(job_id)
    except JobNotFound:
        return None
    if job.status.is_terminal():
        return job
    if job.input_ref:  # a redelivered message: the input is stored; the chain may not have been sent
        enqueue(job, rt.settings)
        return job
    url = (job.source or {}).get("url")
    if not url:
        return _fail(rt, job_id, "input_unreachable", "the job has neither an input image nor a URL to fetch it from")
    s = rt.settings
    try:
        fetched = fetcher(url, allow_private=s.input_allow_private, max_bytes=s.max_upload_bytes,
                          timeout_s=s.input_fetch_timeout_s)
        with decode_slots(s.decode_concurrency):
            clean = validate_image(fetched.data, limits=upload_limits(rt))
    except FetchFailed as e:
        return _fail(rt, job_id, e.code, f"could not fetch the input image: {e}")
    except InputRejected as e:
        return _fail(rt, job_id, _REFUSED_AS.get(e.code, "input_not_image"),
                     f"the input image at {url} was refused ({e.code}): {e}")
    ref = rt.blobs.save(clean.png, ext="png")
    try:
        job = rt.store.attach_input(job_id, ref)
    except InvalidTransition:
        return None  # canceled or expired while it was fetched
    log.info("job %s: input fetched from %s (%d bytes%s)", job_id, fetched.url, len(fetched.data),
             f", {len(fetched.redirects)} redirect(s)" if fetched.redirects else "")
    enqueue(job, rt.settings)
    return job


def _fail(rt: Services, job_id: str, code: str, message: str) -> Job | None:
    log.info("job %s: %s: %s", job_id, code, message)
    try:
        return rt.store.fail(job_id, code=code, message=message)
    except (InvalidTransition, JobNotFound):
        return None  # it ended meanwhile
