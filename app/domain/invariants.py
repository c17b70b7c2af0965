"""The log's invariants (DESIGN section 2) as pure checks over one request's events."""

from __future__ import annotations

from collections.abc import Sequence

from app.domain.events import TERMINAL_TYPES, StoredEvent


def stream_problems(events: Sequence[StoredEvent]) -> list[str]:
    """What is wrong with one request's events; empty when they keep every invariant.

    (Whether the read model agrees with the events is checked by comparing it with
    ``fold_request``.)
    """
    if not events:
        return ["no events"]
    problems: list[str] = []
    seqs = [e.seq for e in events]
    if seqs != list(range(1, len(events) + 1)):
        problems.append(f"seq is not dense from 1 (saw {seqs[:5]}...)")
    if events[0].type != "created":
        problems.append(f"first event is {events[0].type}, not created")
    terminals = [n for n, e in enumerate(events) if e.type in TERMINAL_TYPES]
    if len(terminals) > 1:
        problems.append(f"{len(terminals)} terminal events")
    if terminals and terminals[-1] != len(events) - 1:
        problems.append("events follow the terminal event")
    return problems
