"""A small HTTP client of the JSON API v1, used by ``pixelmill submit``.

Errors come back as two exceptions: ``ServerUnreachable`` (no answer at all: the URL is
wrong, the server is down, the network is gone) and ``ApiError`` (the server answered with
its ``{"error": {"code", "message"}}`` shape and a status).
"""

from __future__ import annotations

import json
import mimetypes
from typing import Any

import requests

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # a batch upload is validated and stored before the 202 comes back


class ServerUnreachable(Exception):
    """No answer from the server; the message names the URL."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach pixelmill at {url} ({_why(cause)}); is the server running? "
                         "Set the address with --url or PIXELMILL_URL")
        self.url = url


class ApiError(Exception):
    """The server refused a request; ``message`` is the server's own words."""

    def __init__(self, *, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class ApiClient:
    def __init__(self, url: str, *, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        self.session.close()

    def check(self) -> None:
        """The server answers and accepts our key (before anything is uploaded)."""
        health = self._request("GET", "/healthz", timeout=(CONNECT_TIMEOUT_S, 10))
        if health.status_code != 200:
            raise ApiError(status=health.status_code, code="unavailable",
                           message=f"the server at {self.url} is not healthy: {health.text[:200]}")
        response = self._request("GET", "/api/v1/jobs", params={"limit": 1})
        if response.status_code == 401:
            raise ApiError(status=401, code="unauthorized",
                           message=f"the server at {self.url} needs an API key: pass --api-key or set "
                                   f"PIXELMILL_API_KEY ({_error_of(response)[1]})")
        _raise_for(response)

    def create_batch(self, files: list[tuple[str, bytes]], *, params: dict[str, Any],
                     idempotency_key: str | None = None) -> dict[str, Any]:
        """POST /api/v1/batches: the files (name, bytes) as one batch; 202 with the batch and its jobs.
        With ``idempotency_key``, a retry of the same request answers the batch the first one made."""
        uploads = [("images", (name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"))
                   for name, data in files]
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = self._request("POST", "/api/v1/batches", files=uploads, data={"params": json.dumps(params)},
                                 headers=headers)
        _raise_for(response)
        return response.json()

    def fetch_batch(self, batch_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/batches/{batch_id}")

    def fetch_job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/jobs/{job_id}")

    def fetch_result(self, job_id: str) -> bytes:
        response = self._request("GET", f"/api/v1/jobs/{job_id}/result")
        _raise_for(response)
        return response.content

    def _json(self, method: str, path: str) -> dict[str, Any]:
        response = self._request(method, path)
        _raise_for(response)
        return response.json()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        try:
            return self.session.request(method, f"{self.url}{path}", **kwargs)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise ServerUnreachable(self.url, e) from e


def _raise_for(response: requests.Response) -> None:
    if response.status_code < 400:
        return
    code, message = _error_of(response)
    retry_after = response.headers.get("Retry-After")
    raise ApiError(status=response.status_code, code=code, message=message,
                   retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)


def _error_of(response: requests.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}", (response.text.strip()[:200] or response.reason or "no message")


def _why(error: Exception) -> str:
    """The useful end of a requests error ("connection refused"), not urllib3's whole story."""
    if isinstance(error, requests.Timeout):
        return "no answer in time"
    text = str(error)
    for phrase in ("Connection refused", "Name or service not known", "No route to host",
                   "Connection reset by peer", "Network is unreachable", "Temporary failure in name resolution"):
        if phrase in text:
            return phrase.lower()
    return text if len(text) <= 160 else text[:157] + "…"
