"""Replay pacing: when each stored event is due, from the gaps between their timestamps."""

from __future__ import annotations

from datetime import datetime


def replay_offset(first_at: datetime, at: datetime, speed: float) -> float:
    """Seconds after the replay began at which the event committed at ``at`` is due.

    ``speed`` scales the original pacing (2 = twice as fast); 0 means no delay at all.
    """
    if speed <= 0:
        return 0.0
    return max(0.0, (at - first_at).total_seconds() / speed)
