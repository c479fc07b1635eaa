"""``pixelmill webhooks listen``: your tenant's webhook events on your machine, for local development,
as the Stripe CLI does it. It follows ``GET /api/v1/events`` (an authenticated stream: nothing needs
to reach your machine), signs each event with a secret of this session (``whsec_…``, printed at
start) and POSTs it to ``--forward-to`` with Standard Webhooks headers — or, without it, prints each
event as one line. The POST goes from this machine: the server's outbound guard is not involved.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

import requests

from client.api import Client, Event
from client.http import ApiError, ServerUnreachable
from client.webhooks import new_secret, sign_webhook

FORWARD_TIMEOUT_S = 10.0
EXIT_OK, EXIT_FAILED = 0, 1


@dataclass(frozen=True)
class ListenOptions:
    url: str
    api_key: str | None = None
    forward_to: str | None = None
    events: frozenset[str] = frozenset()  # only these types; empty: every event
    secret: str | None = None  # default: a new one per session


def run_listen(options: ListenOptions, *, out: TextIO = sys.stdout) -> int:
    """The whole command; returns its exit code (Ctrl-C ends it with 0)."""
    secret = options.secret or new_secret()
    forward = requests.Session() if options.forward_to else None
    opened = []

    def ready() -> None:
        if opened:
            _say(out, "reconnected: listening again (events of the gap are not replayed)")
            return
        opened.append(True)
        _say(out, f"Ready! Following the events of your tenant at {options.url.rstrip('/')}/api/v1/events")
        _say(out, f"Your webhook signing secret is {secret} (this session only; ^C to quit)")
        if options.forward_to:
            _say(out, f"Forwarding each event to {options.forward_to}")

    with Client(options.url, api_key=options.api_key) as client:
        try:
            for event in _wanted(client.tenant_events(on_open=ready), options.events):
                if forward is None:
                    _say(out, f"{event.type} {event.id} {event.raw}")
                else:
                    _say(out, forward_one(forward, event, url=options.forward_to or "", secret=secret))
        except KeyboardInterrupt:
            return EXIT_OK
        except (ServerUnreachable, ApiError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        finally:
            if forward is not None:
                forward.close()
    return EXIT_OK


def forward_one(session: requests.Session, event: Event, *, url: str, secret: str) -> str:
    """POST one event, signed, to the local receiver; a line saying how it went."""
    headers = sign_webhook(event.raw, secret=secret, msg_id=event.id or "")
    started = time.monotonic()
    try:
        response = session.post(url, data=event.raw.encode(), headers=headers, timeout=FORWARD_TIMEOUT_S,
                                allow_redirects=False)
    except requests.RequestException as e:
        return f"{event.type} {event.id} → {url}: failed ({type(e).__name__}: {e})"
    ms = (time.monotonic() - started) * 1000
    return f"{event.type} {event.id} → {url} [{response.status_code}] in {ms:.0f} ms"


def _wanted(events: Iterable[Event], types: frozenset[str]) -> Iterable[Event]:
    return (e for e in events if not types or e.type in types)


def _say(out: TextIO, line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {line}", file=out, flush=True)
