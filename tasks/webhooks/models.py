"""What the webhook layer keeps: endpoints (with their secrets), subscriptions of a job or a
batch, deliveries and their attempts. Dataclasses inside; pydantic at the edges (request
bodies and the payload that goes out)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.events import EVENT_TYPES, JOB_EVENTS, JobEvent
from tasks.webhooks.errors import InvalidWebhook

DeliveryStatus = Literal["pending", "delivered", "dead"]
MAX_ATTEMPT_LOG = 50
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_url(url: str) -> str:
    """The one spelling of a webhook URL that endpoints are stored, deduplicated and counted by:
    scheme and host lower-case, the default port dropped, an empty path as "/", no fragment (it
    is never sent). ``https://EXAMPLE.com:443/x#y`` and ``https://example.com/x`` are one URL.
    Path and query are kept as written (a receiver may tell them apart)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6: back in brackets
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:  # refused by the guard; kept, not hidden
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def parse_events(value: str | list[str] | tuple[str, ...] | None, *, default: tuple[str, ...]) -> tuple[str, ...]:
    """An event filter from a comma-separated string, a JSON list or a list; ``*`` means every event."""
    if value is None or value == "" or value == []:
        return default
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise InvalidWebhook(f"webhook_events is not a valid JSON list: {e}") from e
        else:
            value = [part.strip() for part in text.split(",")]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidWebhook("webhook_events must be a list of event names or a comma-separated string")
    names = [v.strip() for v in value if v.strip()]
    if "*" in names:
        return EVENT_TYPES
    unknown = sorted(set(names) - set(EVENT_TYPES))
    if unknown:
        raise InvalidWebhook(f"unknown webhook event(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}")
    return tuple(e for e in EVENT_TYPES if e in names) or default


# --- the edges ------------------------------------------------------------------------------

class EndpointCreate(BaseModel):
    """POST /api/v1/webhooks."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    events: list[str] | str | None = Field(None, validate_default=True, description="default: every event")
    description: str = Field("", max_length=200)

    @field_validator("events", mode="before")
    @classmethod
    def _events(cls, value: Any) -> Any:
        return list(parse_events(value, default=EVENT_TYPES))


class SubscriptionRequest(BaseModel):
    """``webhook_url`` and ``webhook_events`` sent with a job or a batch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1, max_length=2048)
    events: tuple[str, ...] = EVENT_TYPES


class WebhookPayload(BaseModel):
    """The body of every delivery: the event, when it happened, and the job (or batch) as the
    API returns it — links to results, never image bytes."""

    type: str
    timestamp: str
    data: dict[str, Any]

    @classmethod
    def for_event(cls, event: JobEvent, data: dict[str, Any]) -> "WebhookPayload":
        when = datetime.fromtimestamp(event.at, tz=timezone.utc).isoformat(timespec="milliseconds")
        return cls(type=event.type, timestamp=when.replace("+00:00", "Z"), data=data)


# --- inside ---------------------------------------------------------------------------------

@dataclass
class Secret:
    value: str
    created_at: float
    expires_at: float | None = None  # set when rotated out; it still signs until then

    def is_live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass
class Endpoint:
    id: str
    tenant: str
    url: str
    events: list[str]
    secrets: list[Secret]  # newest first
    description: str = ""
    standing: bool = True  # False: used only by the jobs/batches that name its URL
    disabled: bool = False
    disabled_reason: str | None = None
    created_at: float = field(default_factory=time.time)

    @classmethod
    def create(cls, *, tenant: str, url: str, events: list[str] | tuple[str, ...], secret: str,
               description: str = "", standing: bool = True) -> "Endpoint":
        now = time.time()
        return cls(id=f"ep_{uuid.uuid4().hex[:24]}", tenant=tenant, url=url, events=list(events),
                   secrets=[Secret(value=secret, created_at=now)], description=description,
                   standing=standing, created_at=now)

    def wants(self, event_type: str) -> bool:
        return not self.disabled and event_type in self.events

    def live_secrets(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        return [s.value for s in self.secrets if s.is_live(now)]

    def public(self, *, now: float | None = None) -> dict[str, Any]:
        """What the API shows: never a secret."""
        now = time.time() if now is None else now
        previous = [s for s in self.secrets[1:] if s.is_live(now)]
        return {
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "description": self.description,
            "standing": self.standing,
            "disabled": self.disabled,
            "disabled_reason": self.disabled_reason,
            "created_at": self.created_at,
            "secret_created_at": self.secrets[0].created_at if self.secrets else None,
            "previous_secret_expires_at": max((s.expires_at or 0) for s in previous) if previous else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Endpoint":
        data = dict(data)
        data["secrets"] = [Secret(**s) for s in data["secrets"]]
        return cls(**data)


@dataclass(frozen=True)
class Subscription:
    """A job's or batch's own webhook: which endpoint, which events."""

    endpoint_id: str
    events: tuple[str, ...] = JOB_EVENTS

    def wants(self, event_type: str) -> bool:
        return event_type in self.events


@dataclass
class Attempt:
    at: float
    status_code: int | None
    latency_ms: float | None
    error: str | None = None
    retry_in_s: float | None = None


@dataclass
class Delivery:
    id: str
    event_id: str  # the webhook-id: the same on every attempt and every redelivery
    event: str
    tenant: str
    subject: str  # job id, or batch id for batch.completed: events of one subject go out in order
    endpoint_id: str
    url: str
    body: str
    created_at: float
    next_attempt_at: float
    job_id: str | None = None
    batch_id: str | None = None
    status: str = "pending"
    tries: int = 0  # attempts in this round (a redelivery starts a new round)
    schedule: int = 0  # bumped on every attempt and redelivery; stale task messages carry an old one
    attempts: list[Attempt] = field(default_factory=list)
    attempts_total: int = 0
    delivered_at: float | None = None
    dead_at: float | None = None
    last_error: str | None = None

    @classmethod
    def create(cls, *, event: JobEvent, endpoint: Endpoint, body: str) -> "Delivery":
        now = time.time()
        return cls(id=delivery_id(event.id, endpoint.id), event_id=event.id, event=event.type,
                   tenant=event.tenant, subject=event.subject, endpoint_id=endpoint.id, url=endpoint.url,
                   body=body, created_at=now, next_attempt_at=now, job_id=event.job_id,
                   batch_id=event.batch_id)

    def record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        del self.attempts[:-MAX_ATTEMPT_LOG]
        self.attempts_total += 1
        self.tries += 1
        self.schedule += 1
        self.last_error = attempt.error

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def summary(self) -> dict[str, Any]:
        """The short form a job's page and payload show."""
        last = self.last
        return {
            "id": self.id,
            "event": self.event,
            "webhook_id": self.event_id,
            "job_id": self.job_id,
            "batch_id": self.batch_id,
            "endpoint_id": self.endpoint_id,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts_total,
            "last_status_code": last.status_code if last else None,
            "last_latency_ms": last.latency_ms if last else None,
            "last_error": self.last_error,
            "created_at": self.created_at,
            "next_attempt_at": self.next_attempt_at if self.status == "pending" else None,
            "delivered_at": self.delivered_at,
            "dead_at": self.dead_at,
        }

    def detail(self) -> dict[str, Any]:
        return {**self.summary(), "attempt_log": [asdict(a) for a in self.attempts]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Delivery":
        data = dict(data)
        data["attempts"] = [Attempt(**a) for a in data.get("attempts", [])]
        return cls(**data)


def delivery_id(event_id: str, endpoint_id: str) -> str:
    """Deterministic, so handling the same event twice creates no second delivery."""
    return "dlv_" + hashlib.sha256(f"{event_id}:{endpoint_id}".encode()).hexdigest()[:32]
