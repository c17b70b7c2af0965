"""Incremental parser: model text -> content-block events (DESIGN section 4).

The model writes components between marker lines::

    /// START HeroSection position=hero
    ...component source...
    /// END HeroSection

``MarkerParser.feed`` takes text in chunks of any size and returns the events that text
completes; ``finish`` flushes the rest. A partial line that might still become a marker is
held back until its newline arrives; any other text streams out at once. Adjacent deltas
of one ``feed`` call are merged into one event, so the runner's flush interval bounds the
event rate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from app.domain.events import (
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    Payload,
    ResponseChunk,
)

MARKER_PREFIX = "///"
NAME_RE = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
POSITION_RE = re.compile(r"[a-z0-9_-]{1,32}")
_START_RE = re.compile(r"^\s*///\s*START\s+(?P<name>\S+)(?:\s+position=(?P<position>\S+))?\s*$")
_END_RE = re.compile(r"^\s*///\s*END\s+(?P<name>\S+)\s*$")


@dataclass(frozen=True, slots=True)
class MarkerLimits:
    """Bounds the parser enforces on model output."""

    max_component_chars: int = 100_000
    max_components: int = 64
    max_depth: int = 4
    error_budget: int = 8


class ParseBudgetExceeded(Exception):
    """The output broke the marker grammar too often: the generation fails."""


@dataclass(slots=True)
class _Block:
    index: int
    name: str
    size: int = 0
    oversized: bool = False


@dataclass(slots=True)
class MarkerParser:
    """Stateful, incremental marker parser for one generation."""

    limits: MarkerLimits = field(default_factory=MarkerLimits)
    errors: list[str] = field(default_factory=list)
    _pending: str = ""
    _stack: list[_Block] = field(default_factory=list)
    _count: int = 0
    _out: list[Payload] = field(default_factory=list)

    def feed(self, text: str) -> list[Payload]:
        """Events completed by ``text``."""
        data = self._pending + text
        self._pending = ""
        start = 0
        while True:
            newline = data.find("\n", start)
            if newline < 0:
                break
            self._line(data[start : newline + 1])
            start = newline + 1
        tail = data[start:]
        if _may_become_marker(tail):
            self._pending = tail
        elif tail:
            self._text(tail)
        return self._drain()

    def finish(self) -> list[Payload]:
        """Flush held-back text and close blocks the model left open."""
        if self._pending:
            tail, self._pending = self._pending, ""
            self._line(tail)
        while self._stack:
            block = self._stack.pop()
            self._out.append(
                ContentBlockStop(
                    index=block.index,
                    size=block.size,
                    status="rejected",
                    reason="the component was not closed by an END marker",
                )
            )
        return self._drain()

    @property
    def open_blocks(self) -> int:
        """How many components are open right now."""
        return len(self._stack)

    def _line(self, line: str) -> None:
        if line.lstrip().startswith(MARKER_PREFIX):
            body = line.rstrip("\r\n")
            if (m := _START_RE.match(body)) is not None:
                self._open(m.group("name"), m.group("position"), line)
                return
            if (m := _END_RE.match(body)) is not None:
                self._close(m.group("name"), line)
                return
        self._text(line)

    def _open(self, name: str, position: str | None, line: str) -> None:
        if NAME_RE.fullmatch(name) is None:
            self._error(f"invalid component name {name!r}", line)
            return
        if position is not None and POSITION_RE.fullmatch(position) is None:
            self._error(f"invalid position {position!r} for {name}", line)
            return
        if len(self._stack) >= self.limits.max_depth:
            self._error(f"{name} is nested deeper than {self.limits.max_depth}", line)
            return
        if self._count >= self.limits.max_components:
            self._error(f"more than {self.limits.max_components} components", line)
            return
        index = self._count
        self._count += 1
        parent = self._stack[-1].index if self._stack else None
        self._stack.append(_Block(index=index, name=name))
        self._out.append(
            ContentBlockStart(
                index=index, name=name, position=position or str(index), parent=parent
            )
        )

    def _close(self, name: str, line: str) -> None:
        if not self._stack or self._stack[-1].name != name:
            self._error(f"END {name} does not match the open component", line)
            return
        block = self._stack.pop()
        if block.oversized:
            self._out.append(
                ContentBlockStop(
                    index=block.index,
                    size=block.size,
                    status="rejected",
                    reason=f"the component is longer than {self.limits.max_component_chars} "
                    "characters",
                )
            )
        else:
            self._out.append(ContentBlockStop(index=block.index, size=block.size))

    def _text(self, text: str) -> None:
        if not self._stack:
            self._merge_chunk(text)
            return
        block = self._stack[-1]
        room = self.limits.max_component_chars - block.size
        if len(text) > room:
            # The source is cut at the limit and the component rejected when it closes.
            block.oversized = True
            text = text[: max(room, 0)]
            if not text:
                return
        block.size += len(text)
        last = self._out[-1] if self._out else None
        if isinstance(last, ContentBlockDelta) and last.index == block.index:
            self._out[-1] = ContentBlockDelta(index=block.index, delta=last.delta + text)
        else:
            self._out.append(ContentBlockDelta(index=block.index, delta=text))

    def _merge_chunk(self, text: str) -> None:
        last = self._out[-1] if self._out else None
        if isinstance(last, ResponseChunk):
            self._out[-1] = ResponseChunk(delta=last.delta + text)
        else:
            self._out.append(ResponseChunk(delta=text))

    def _error(self, message: str, line: str) -> None:
        self.errors.append(message)
        if len(self.errors) > self.limits.error_budget:
            raise ParseBudgetExceeded(
                f"{len(self.errors)} marker errors (budget {self.limits.error_budget}); "
                f"last: {message}"
            )
        # A malformed marker is kept as ordinary text so nothing the model wrote is lost.
        self._text(line)

    def _drain(self) -> list[Payload]:
        out, self._out = self._out, []
        return out


def _may_become_marker(partial: str) -> bool:
    """Whether an unfinished line could still turn out to be a marker line."""
    stripped = partial.lstrip(" \t")
    if not stripped:
        return bool(partial)
    return stripped.startswith(MARKER_PREFIX) or MARKER_PREFIX.startswith(stripped)
