"""Checks every test applies to every stream it reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TERMINAL = {"complete", "error", "cancelled"}


def assert_valid_segment(events: Sequence[dict[str, Any]], after: int) -> None:
    """What one connection delivered, resumed after seq ``after``, possibly cut short:
    consecutive seqs from ``after + 1``, ``created`` first from the start, and nothing
    after a terminal event."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(after + 1, after + 1 + len(events))), f"after {after}: {seqs}"
    if after == 0 and events:
        assert events[0]["type"] == "created", f"first event is {events[0]['type']}"
    terminal_at = [n for n, e in enumerate(events) if e["type"] in TERMINAL]
    assert terminal_at in ([], [len(events) - 1]), "events after the terminal event"


def assert_well_formed(events: Sequence[dict[str, Any]], request_id: str | None = None) -> None:
    """Dense seq from 1, ``created`` first, exactly one terminal event, and it is last."""
    assert events, "the stream had no events"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), f"seq not dense from 1: {seqs}"
    assert events[0]["type"] == "created", f"first event is {events[0]['type']}"
    terminals = [e for e in events if e["type"] in TERMINAL]
    assert len(terminals) == 1, f"{len(terminals)} terminal events"
    assert events[-1]["type"] in TERMINAL, f"last event is {events[-1]['type']}"
    if request_id is not None:
        assert {e["request_id"] for e in events} == {request_id}
