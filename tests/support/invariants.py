"""Checks every test applies to every stream it reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TERMINAL = {"complete", "error", "cancelled"}


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
