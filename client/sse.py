"""Reading Server-Sent Events (text/event-stream) off a streamed ``requests`` response.

Each event is handed on as soon as its blank line arrives: the body is read with ``read1``
(whatever has arrived, chunked or not), never in fixed-size blocks that would hold an event
back until more bytes come.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import requests

MAX_LINE_BYTES = 16 * 1024 * 1024  # a job payload is a few KB; a line this long is not an event stream


@dataclass(frozen=True)
class ServerEvent:
    """One event of a stream: ``event`` (its name, "message" when unnamed), ``data`` (the data
    lines joined by newlines) and ``id`` (the ``id:`` field, when the server sent one)."""

    event: str
    data: str
    id: str | None = None


def lines(response: requests.Response, *, chunk: int = 64 * 1024) -> Iterator[str]:
    """The decoded lines of a streamed response (without their line ends), as they arrive."""
    raw = response.raw
    read = getattr(raw, "read1", None)
    buffer = b""
    while True:
        data = read(chunk, decode_content=True) if read is not None else raw.read(1, decode_content=True)
        if not data:
            break
        buffer += data
        while True:
            cut = _line_end(buffer)
            if cut is None:
                break
            end, after = cut
            yield buffer[:end].decode("utf-8", "replace")
            buffer = buffer[after:]
        if len(buffer) > MAX_LINE_BYTES:
            raise ValueError("an event-stream line is longer than 16 MiB; this is not an event stream")
    if buffer:
        yield buffer.decode("utf-8", "replace")


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """(end of the first line, start of the next) for \\n, \\r\\n or \\r line ends; None if incomplete."""
    n, r = buffer.find(b"\n"), buffer.find(b"\r")
    if r == -1 or (n != -1 and n < r):
        return None if n == -1 else (n, n + 1)
    if r == len(buffer) - 1:
        return None  # a \r at the end: its \n may still come
    return (r, r + 2) if buffer[r + 1:r + 2] == b"\n" else (r, r + 1)


def events(source: Iterator[str]) -> Iterator[ServerEvent]:
    """Events out of event-stream lines (comments and ``retry:`` are skipped)."""
    name, data, event_id = "", [], None
    for line in source:
        if not line:
            if data:
                yield ServerEvent(event=name or "message", data="\n".join(data), id=event_id)
            name, data, event_id = "", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
