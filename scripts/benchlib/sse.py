"""A minimal, fast Server-Sent Events frame parser for the load generator.

Both servers frame events as ``id: <seq>\\nevent: <type>\\ndata: <json>\\n\\n`` (LF line
ends, one data line). The parser follows the HTML standard's field rules (a leading space
after the colon is dropped, comment lines start with ``:``, a block without data is not
dispatched) but only splits on LF, which is all either server sends.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

_AT = b'"at":"'
_AT_LEN = len("2026-01-01T00:00:00.000000Z")


class Frame(NamedTuple):
    """One dispatched SSE event."""

    id: int | None
    event: str
    data: bytes


def parse_frames(buffer: bytes) -> tuple[list[Frame], bytes]:
    """The complete frames at the start of ``buffer``, and the incomplete rest."""
    frames: list[Frame] = []
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n")
    start = 0
    while (end := buffer.find(b"\n\n", start)) >= 0:
        block = buffer[start:end]
        start = end + 2
        seq: int | None = None
        event = "message"
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if not line or line[:1] == b":":
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"id":
                seq = int(value) if value.isdigit() else None
            elif name == b"event":
                event = value.decode()
        if data:
            frames.append(Frame(seq, event, b"\n".join(data)))
    return frames, buffer[start:]


def event_at(data: bytes) -> float:
    """The envelope's ``at`` (RFC 3339, UTC) as POSIX seconds; NaN when it has none.

    The envelope puts ``at`` before any payload field, and a payload string cannot hold
    an unescaped ``"at":"``, so the first match is the envelope's.
    """
    start = data.find(_AT)
    if start < 0:
        return float("nan")
    start += len(_AT)
    return datetime.fromisoformat(data[start : start + _AT_LEN].decode()).timestamp()
