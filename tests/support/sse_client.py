"""A small SSE reader over httpx, the way a script or EventSource reads genstream."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.invariants import assert_valid_segment


@dataclass
class Frame:
    """One parsed SSE frame."""

    id: str | None = None
    event: str | None = None
    data: str = ""
    retry: int | None = None
    comment: bool = False

    def json(self) -> dict[str, Any]:
        value = json.loads(self.data)
        assert isinstance(value, dict)
        return value


@dataclass
class StreamRead:
    """What one connection to the stream endpoint delivered."""

    status: int
    headers: httpx.Headers
    frames: list[Frame] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The log events' JSON, in order (a leading ``snapshot`` frame is not one)."""
        return [
            f.json()
            for f in self.frames
            if f.event is not None and f.event != "snapshot" and not f.comment
        ]


def parse_frames(lines: list[str]) -> list[Frame]:
    """Frames from SSE lines (without line endings)."""
    frames: list[Frame] = []
    current = Frame()
    touched = False
    for line in lines:
        if line == "":
            if touched:
                frames.append(current)
            current, touched = Frame(), False
            continue
        touched = True
        if line.startswith(":"):
            current.comment = True
            current.data = line[1:].strip()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            current.id = value
        elif name == "event":
            current.event = value
        elif name == "data":
            current.data = f"{current.data}\n{value}" if current.data else value
        elif name == "retry":
            current.retry = int(value)
    if touched:
        frames.append(current)
    return frames


async def read_stream(
    client: httpx.AsyncClient,
    path: str,
    *,
    last_event_id: int | None = None,
    max_events: int | None = None,
    use_query: bool = False,
    first_seq: int | None = None,
) -> StreamRead:
    """Read the stream until it ends, or drop the connection after ``max_events`` events."""
    headers = {"Accept": "text/event-stream"}
    params = {}
    if last_event_id is not None:
        if use_query:
            params["last_event_id"] = str(last_event_id)
        else:
            headers["Last-Event-ID"] = str(last_event_id)
    # httpx would replace a query string already in ``path`` with an empty ``params``.
    async with client.stream("GET", path, headers=headers, params=params or None) as response:
        result = StreamRead(status=response.status_code, headers=response.headers)
        if response.status_code != 200:
            await response.aread()
            return result
        lines: list[str] = []
        seen = 0
        async for line in response.aiter_lines():
            lines.append(line)
            seen += line.startswith("event:")
            if line == "" and max_events is not None and seen >= max_events:
                break  # leaving the block closes the connection mid-stream
        result.frames = parse_frames(lines)
        # Every connection a test makes is checked, whole or cut short.
        start = first_seq if first_seq is not None else (last_event_id or 0) + 1
        assert_valid_segment(result.events, start - 1)
        return result


async def runner_of(client: httpx.AsyncClient, base: str, rid: str) -> tuple[str, int]:
    """Which node (or worker) runs ``rid``, from its ``status{running}`` event, and the
    seq read so far (the stream is dropped after four events)."""
    read = await read_stream(client, f"{base}/assistant/stream/{rid}", max_events=4)
    running = next(e for e in read.events if e["type"] == "status" and e["status"] == "running")
    return running["message"].removeprefix("running on "), read.events[-1]["seq"]
