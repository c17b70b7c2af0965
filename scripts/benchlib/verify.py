"""Pure checks that every stream was delivered whole: no event lost, none duplicated.

A client's view of a request is the ``(seq, type)`` pairs it received, in order, across
every connection (first connect and resumes). The truth is what the server lists at the
end (``GET /assistant/requests/{id}/events``). DESIGN section 2 invariants 2 and 3 hold
for the stored list; the received list must equal it, or be a prefix of it when the client
stopped reading before the terminal event (the drain deadline of the run).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TERMINAL_TYPES = frozenset({"complete", "error", "cancelled"})

Event = tuple[int, str]
"""``(seq, type)`` of one event."""


def stored_problems(stored: Sequence[Event]) -> list[str]:
    """Broken log invariants: seq dense from 1, ``created`` first, one terminal, last."""
    problems: list[str] = []
    if not stored:
        return ["no events stored"]
    for expected, (seq, _) in enumerate(stored, start=1):
        if seq != expected:
            problems.append(f"stored seq {seq} where {expected} was due")
            break
    if stored[0][1] != "created":
        problems.append(f"first stored event is {stored[0][1]}, not created")
    terminals = [n for n, (_, type_) in enumerate(stored) if type_ in TERMINAL_TYPES]
    if len(terminals) != 1:
        problems.append(f"{len(terminals)} terminal events stored")
    elif terminals[0] != len(stored) - 1:
        problems.append("events stored after the terminal event")
    return problems


def received_problems(received: Sequence[Event], stored: Sequence[Event]) -> list[str]:
    """How the client's events differ from the stored ones (duplicates, gaps, mismatches)."""
    problems: list[str] = []
    counts = Counter(seq for seq, _ in received)
    duplicated = sorted(seq for seq, n in counts.items() if n > 1)
    if duplicated:
        problems.append(f"duplicated seq {_listing(duplicated)}")
    if any(b[0] <= a[0] for a, b in itertools.pairwise(received)):
        problems.append("seq not strictly increasing")
    seen_terminal = bool(received) and received[-1][1] in TERMINAL_TYPES
    expected = list(stored) if seen_terminal else list(stored[: len(received)])
    if list(received) != expected:
        have = {seq for seq, _ in received}
        lost = [seq for seq, _ in expected if seq not in have]
        if lost:
            problems.append(f"lost seq {_listing(lost)}")
        stored_types = dict(stored)
        wrong = [seq for seq, type_ in received if stored_types.get(seq, type_) != type_]
        if wrong:
            problems.append(f"type differs from the log at seq {_listing(wrong)}")
        unknown = [seq for seq, _ in received if seq not in stored_types]
        if unknown:
            problems.append(f"seq not in the log {_listing(unknown)}")
        if not problems:
            problems.append("received events differ from the log")
    return problems


def _listing(seqs: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(str(s) for s in seqs[:limit])
    return shown + (f" (+{len(seqs) - limit} more)" if len(seqs) > limit else "")


@dataclass(frozen=True, slots=True)
class StreamCheck:
    """The verdict on one request."""

    request_id: str
    complete: bool
    """The client received the terminal event (else it checked a prefix)."""
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing duplicated, and the log's invariants hold."""
        return not self.problems


def check_stream(
    request_id: str, received: Sequence[Event], stored: Sequence[Event]
) -> StreamCheck:
    """Compare what one client received with what the log holds for that request."""
    problems = stored_problems(stored) + received_problems(received, stored)
    complete = bool(received) and received[-1][1] in TERMINAL_TYPES
    return StreamCheck(request_id, complete, tuple(problems))


@dataclass(slots=True)
class VerifySummary:
    """Totals over every request of a run."""

    requests: int = 0
    complete: int = 0
    partial: int = 0
    failed: int = 0
    events: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No request lost or duplicated an event."""
        return self.failed == 0


def summarize_checks(
    checks: Iterable[StreamCheck], events: int = 0, examples: int = 5
) -> VerifySummary:
    """Count complete, partial (cut by the drain deadline) and failed requests."""
    summary = VerifySummary(events=events)
    for check in checks:
        summary.requests += 1
        if not check.ok:
            summary.failed += 1
            if len(summary.examples) < examples:
                summary.examples.append(f"{check.request_id}: {'; '.join(check.problems)}")
        elif check.complete:
            summary.complete += 1
        else:
            summary.partial += 1
    return summary
