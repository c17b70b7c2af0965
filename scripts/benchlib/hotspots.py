"""Where the service's time goes: py-spy's raw (collapsed) stacks, summarised.

Each line of ``py-spy record --format raw`` is ``frame;frame;...;leaf count`` with frames
written ``function (path:line)``, root first. Self time goes to the leaf frame (time in C
code called from it included); inclusive time to every distinct function on the stack.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_LIB = re.compile(r"^.*/lib/python3\.\d+/(site-packages/)?")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")
AREAS = (
    ("sqlalchemy/", "SQLAlchemy"),
    ("aiosqlite/", "aiosqlite"),
    ("sqlite3/", "sqlite3"),
    ("greenlet/", "greenlet"),
    ("litestar/", "Litestar"),
    ("uvicorn/", "uvicorn"),
    ("msgspec/", "msgspec"),
    ("asyncio/", "asyncio"),
    ("app/store/", "app.store"),
    ("app/api/", "app.api"),
    ("app/generation/", "app.generation"),
    ("app/domain/", "app.domain"),
)


def short_path(path: str) -> str:
    """A path without the interpreter, virtualenv or checkout prefix."""
    path = _LIB.sub("", path)
    root = f"{ROOT}/"
    return path.removeprefix(root)


def frame_key(frame: str) -> str:
    """``function (short/path.py)``: a frame without its line number."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['func']} ({short_path(match['path'])})"


def area_of(frame: str) -> str:
    """The library or package a frame belongs to."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return "unknown (no Python frame)"
    path = match["path"]
    if path.endswith("asyncio/runners.py"):
        # The loop's own C code (uvloop: polling, transports, callbacks) under run().
        return "event loop internals (uvloop, C)"
    short = short_path(path)
    for prefix, name in AREAS:
        if short.startswith(prefix):
            return name
    return "other standard library" if _LIB.match(path) else "other"


@dataclass(slots=True)
class Profile:
    """Sample counts by leaf function, by function on the stack, by area, and by thread."""

    samples: int = 0
    self_time: Counter[str] = field(default_factory=Counter)
    app: Counter[str] = field(default_factory=Counter)
    """Inclusive samples of the service's own functions (``app/``, but not the CLI roots)."""
    inclusive: Counter[str] = field(default_factory=Counter)
    areas: Counter[str] = field(default_factory=Counter)
    expected: int = 0
    """Samples a thread holding the GIL all the time would have given (rate x seconds)."""
    worker_threads: int = 0
    """Samples whose stack starts in ``threading`` (aiosqlite's thread), not the event loop."""

    def share(self, count: int) -> float:
        """``count`` as a percentage of all samples."""
        return 100.0 * count / self.samples if self.samples else float("nan")


def parse_raw(lines: Iterable[str]) -> Profile:
    """Fold py-spy raw output into a :class:`Profile`."""
    profile = Profile()
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        profile.samples += count
        profile.self_time[frame_key(frames[-1])] += count
        profile.areas[area_of(frames[-1])] += count
        keys = {frame_key(f) for f in frames}
        for key in keys:
            profile.inclusive[key] += count
            if "(app/" in key and "(app/cli.py)" not in key:
                profile.app[key] += count
        if "threading.py" in frames[0]:
            profile.worker_threads += count
    return profile


def top(counter: Counter[str], profile: Profile, n: int = 12) -> list[tuple[str, float]]:
    """The ``n`` largest entries as ``(name, percent of samples)``."""
    return [(name, profile.share(count)) for name, count in counter.most_common(n)]
