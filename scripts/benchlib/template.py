"""Pure conversion of a calibration run into the relay's script, and its offered rate.

The relay must offer what the service offers. So the harness first records one real
generation per prompt on the service, unhurried, and the relay replays those events
(same types, same payloads, same sizes) at the same offsets from the request's
creation. Events the service committed together (one ``at``) are published together.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

HEAD_FIELDS = ("request_id", "seq", "type", "at")

Batch = tuple[float, list[tuple[str, bytes]]]
"""``(offset_s, [(type, payload_json), ...])``: events published at one moment."""


def payload_of(envelope: bytes) -> bytes:
    """The payload JSON of an envelope: the object without ``request_id/seq/type/at``."""
    value = msgspec.json.decode(envelope)
    if not isinstance(value, dict):
        raise ValueError("an event envelope is a JSON object")
    for name in HEAD_FIELDS:
        value.pop(name, None)
    return msgspec.json.encode(value)


def batches(trace: Sequence[tuple[float, str, bytes]]) -> list[Batch]:
    """Events grouped by commit time, as offsets from the first (the ``created`` event)."""
    if not trace:
        return []
    origin = trace[0][0]
    out: list[Batch] = []
    last_at: float | None = None
    for at, type_, data in trace:
        if at != last_at:
            out.append((round(at - origin, 6), []))
            last_at = at
        out[-1][1].append((type_, payload_of(data)))
    return out


def events_per_second(script: Sequence[Batch]) -> float:
    """The rate one stream is offered while its generation runs: events over the span."""
    if len(script) < 2 or script[-1][0] <= 0:
        return float("nan")
    return event_count(script) / script[-1][0]


def event_count(script: Sequence[Batch]) -> int:
    """Events in one generation."""
    return sum(len(events) for _, events in script)


def encode_scripts(scripts: dict[str, list[Batch]]) -> bytes:
    """The relay's scripts as JSON (payloads as strings)."""
    return msgspec.json.encode(
        {
            prompt: [[offset, [[t, p.decode()] for t, p in events]] for offset, events in script]
            for prompt, script in scripts.items()
        }
    )


def decode_scripts(raw: bytes) -> dict[str, list[Batch]]:
    """The inverse of :func:`encode_scripts`."""
    data = msgspec.json.decode(raw)
    return {
        prompt: [(float(offset), [(t, p.encode()) for t, p in events]) for offset, events in script]
        for prompt, script in data.items()
    }
