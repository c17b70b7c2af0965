"""Server-Sent Events wire format: pure functions, separate from the transport.

Per the HTML Living Standard (9.2 Server-sent events), a frame is a block of
``field: value`` lines ended by a blank line; ``id`` sets the client's last event ID,
which an EventSource sends back as ``Last-Event-ID`` when it reconnects. Lines starting
with ``:`` are comments, ignored by clients but enough to keep proxies from closing an
idle connection. JSON never contains a raw newline, so one ``data`` line always suffices.
"""

from __future__ import annotations

PING = b": ping\n\n"


def retry_frame(ms: int) -> bytes:
    """Tells the client how long to wait before reconnecting."""
    return b"retry: %d\n\n" % ms


def event_frame(seq: int, type_: str, data: bytes) -> bytes:
    """One event: its ``seq`` as the id, its type as the event name, its JSON as data."""
    if b"\n" in data or b"\r" in data:
        raise ValueError("SSE data must be single-line JSON")
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type_.encode(), data)


def parse_last_event_id(value: str | None) -> int | None:
    """The seq a client has seen, from a ``Last-Event-ID``; None when absent or empty.

    Raises ValueError for anything but a non-negative decimal integer.
    """
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValueError(f"Last-Event-ID must be a non-negative integer, got {value!r}")
    return int(text)
