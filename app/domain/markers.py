"""Incremental parser: model text -> content-block events (DESIGN section 4).

The model writes components between marker lines::

    /// START HeroSection position=hero
    ...component source...
    /// END HeroSection

``MarkerParser.feed`` takes text in chunks of any size and returns the events that text
completes; ``finish`` flushes the rest. The same text, split into chunks in any way,
yields the same events once adjacent deltas are merged (``merge_deltas``).

- Outside components, text streams out at once, except a line start that might still
  become a marker, which is held back until its newline.
- Inside components, source streams line by line: every complete line is checked for
  script injection before it is sent, so the check cannot depend on where chunks split.
- A START inside an open component opens a child (``parent``). Names, positions, depth,
  count and size are bounded; malformed markers are kept as text and counted against an
  error budget, past which the parse fails.
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

# Script injection in generated markup (DESIGN section 4). Each pattern fits in one line.
INJECTION_RE = re.compile(
    r"<\s*script\b"  # script elements
    r"|\b(?:java|vb)script\s*:"  # javascript: / vbscript: URLs
    r"|<[^>]*?\son[a-z]+\s*="  # inline event handlers (onclick=, onClick={...})
    r"|dangerouslySetInnerHTML",
    re.IGNORECASE,
)


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
    stopped: bool = False
    """Already stopped as rejected: the rest of its source is dropped."""
    silent: bool = False
    """Opened inside a rejected component: no events at all."""


@dataclass(slots=True)
class MarkerParser:
    """Stateful, incremental marker parser for one generation."""

    limits: MarkerLimits = field(default_factory=MarkerLimits)
    errors: list[str] = field(default_factory=list)
    _line: str = ""
    _mid_line: bool = False
    _stack: list[_Block] = field(default_factory=list)
    _count: int = 0
    _out: list[Payload] = field(default_factory=list)
    _kept: list[str] = field(default_factory=list)

    @property
    def accepted_text(self) -> str:
        """The model's text less what the parser dropped (rejected components' source)."""
        return "".join(self._kept)

    def feed(self, text: str) -> list[Payload]:
        """Events completed by ``text``."""
        start = 0
        while (newline := text.find("\n", start)) >= 0:
            line = self._line + text[start : newline + 1]
            self._line = ""
            self._complete_line(line)
            start = newline + 1
        if start < len(text):
            self._line += text[start:]
            self._partial_line()
        return self._drain()

    def finish(self) -> list[Payload]:
        """Flush held-back text and close components the model left open."""
        if self._line:
            line, self._line = self._line, ""
            self._complete_line(line)
        while self._stack:
            block = self._stack.pop()
            if not block.silent and not block.stopped:
                self._stop(block, "the component was not closed by an END marker")
        return self._drain()

    # --- lines --------------------------------------------------------------------------

    def _partial_line(self) -> None:
        if self._stack:
            # Component source waits for its newline (see the module docstring), unless
            # the line alone is already past the size limit.
            if len(self._line) > self.limits.max_component_chars:
                line, self._line = self._line, ""
                self._source(line)
                self._mid_line = True
            return
        if not self._mid_line and _may_become_marker(self._line):
            return
        self._chunk(self._line)
        self._line = ""
        self._mid_line = True

    def _complete_line(self, line: str) -> None:
        at_line_start = not self._mid_line
        self._mid_line = False
        if at_line_start and line.lstrip().startswith(MARKER_PREFIX):
            body = line.rstrip("\r\n")
            if (m := _START_RE.match(body)) is not None:
                if self._open(m.group("name"), m.group("position"), line):
                    self._kept.append(line)
                return
            if (m := _END_RE.match(body)) is not None:
                if self._close(m.group("name"), line):
                    self._kept.append(line)
                return
        if self._stack:
            self._source(line)
        else:
            self._chunk(line)

    # --- markers ------------------------------------------------------------------------

    def _open(self, name: str, position: str | None, line: str) -> bool:
        """Open a component; True when the marker line is kept as a marker."""
        if self._stack and (self._stack[-1].stopped or self._stack[-1].silent):
            self._stack.append(_Block(index=-1, name=name, silent=True))
            return False
        if NAME_RE.fullmatch(name) is None:
            self._error(f"invalid component name {name!r}", line)
            return False
        if position is not None and POSITION_RE.fullmatch(position) is None:
            self._error(f"invalid position {position!r} for {name}", line)
            return False
        if len(self._stack) >= self.limits.max_depth:
            self._error(f"{name} is nested deeper than {self.limits.max_depth}", line)
            return False
        if self._count >= self.limits.max_components:
            self._error(f"more than {self.limits.max_components} components", line)
            return False
        index = self._count
        self._count += 1
        parent = self._stack[-1].index if self._stack else None
        self._stack.append(_Block(index=index, name=name))
        self._out.append(
            ContentBlockStart(
                index=index, name=name, position=position or str(index), parent=parent
            )
        )
        return True

    def _close(self, name: str, line: str) -> bool:
        """Close a component; True when the marker line is kept as a marker."""
        top = self._stack[-1] if self._stack else None
        if top is None or top.name != name:
            if top is not None and (top.stopped or top.silent):
                return False  # inside a rejected component everything is dropped
            self._error(f"END {name} does not match the open component", line)
            return False
        self._stack.pop()
        if top.silent:
            return False
        if not top.stopped:
            self._out.append(ContentBlockStop(index=top.index, size=top.size))
        return True

    # --- text ---------------------------------------------------------------------------

    def _source(self, text: str) -> None:
        block = self._stack[-1]
        if block.stopped or block.silent:
            return
        if (found := INJECTION_RE.search(text)) is not None:
            self._stop(block, f"script injection: {found.group(0)!r}")
            return
        room = self.limits.max_component_chars - block.size
        if len(text) > room:
            if room > 0:
                self._delta(block, text[:room])
            self._stop(
                block,
                f"the component is longer than {self.limits.max_component_chars} characters",
            )
            return
        self._delta(block, text)

    def _delta(self, block: _Block, text: str) -> None:
        self._kept.append(text)
        block.size += len(text)
        last = self._out[-1] if self._out else None
        if isinstance(last, ContentBlockDelta) and last.index == block.index:
            self._out[-1] = ContentBlockDelta(index=block.index, delta=last.delta + text)
        else:
            self._out.append(ContentBlockDelta(index=block.index, delta=text))

    def _stop(self, block: _Block, reason: str) -> None:
        block.stopped = True
        self._out.append(
            ContentBlockStop(index=block.index, size=block.size, status="rejected", reason=reason)
        )

    def _chunk(self, text: str) -> None:
        self._kept.append(text)
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
        if self._stack:
            self._source(line)
        else:
            self._chunk(line)

    def _drain(self) -> list[Payload]:
        out, self._out = self._out, []
        return out


def merge_deltas(events: list[Payload]) -> list[Payload]:
    """Adjacent deltas of the same target merged: the form chunking does not change."""
    out: list[Payload] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, ResponseChunk) and isinstance(last, ResponseChunk):
            out[-1] = ResponseChunk(delta=last.delta + event.delta)
        elif (
            isinstance(event, ContentBlockDelta)
            and isinstance(last, ContentBlockDelta)
            and last.index == event.index
        ):
            out[-1] = ContentBlockDelta(index=event.index, delta=last.delta + event.delta)
        else:
            out.append(event)
    return out


def _may_become_marker(partial: str) -> bool:
    """Whether the start of a line could still turn out to be a marker line."""
    stripped = partial.lstrip(" \t")
    if not stripped:
        return bool(partial)
    return stripped.startswith(MARKER_PREFIX) or MARKER_PREFIX.startswith(stripped)
