"""The log's invariants, checked over one request's events."""

from __future__ import annotations

from datetime import UTC, datetime

from app.domain import events as ev
from app.domain.events import StoredEvent, encode_payload, event_type
from app.domain.invariants import stream_problems


def stored(*payloads: ev.Payload, seqs: list[int] | None = None) -> list[StoredEvent]:
    at = datetime(2026, 11, 21, tzinfo=UTC)
    numbers = seqs or list(range(1, len(payloads) + 1))
    return [
        StoredEvent(id=n, request_id="r", seq=n, type=event_type(p), at=at, data=encode_payload(p))
        for n, p in zip(numbers, payloads, strict=True)
    ]


CREATED = ev.Created(mode="chat", prompt="p")


def test_a_well_formed_stream_has_no_problems() -> None:
    assert stream_problems(stored(CREATED, ev.ResponseChunk(delta="x"), ev.Cancelled())) == []
    assert stream_problems(stored(CREATED, ev.Status(status="running"))) == []


def test_each_invariant_is_reported() -> None:
    assert stream_problems([]) == ["no events"]
    assert "seq is not dense" in stream_problems(stored(CREATED, ev.Cancelled(), seqs=[1, 3]))[0]
    assert stream_problems(stored(ev.Cancelled())) == ["first event is cancelled, not created"]
    two = stream_problems(stored(CREATED, ev.Cancelled(), ev.Complete(content="")))
    assert two == ["2 terminal events"]
    after = stream_problems(stored(CREATED, ev.Cancelled(), ev.ResponseChunk(delta="x")))
    assert after == ["events follow the terminal event"]
