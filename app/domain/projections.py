"""Pure folds of a request's events into read models.

``fold_page`` rebuilds the generated page at any seq ("what did the page look like at
event 40?"); ``fold_request`` rebuilds the ``requests`` read-model row, so the table can be
checked against, and recomputed from, the log alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from app.domain.events import (
    Action,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    Created,
    ResponseChunk,
    StoredEvent,
    status_after,
)


class ComponentView(msgspec.Struct, kw_only=True):
    """One component of a page: its source so far and its nested children."""

    index: int
    name: str
    position: str
    status: str
    content: str
    children: list[ComponentView] = msgspec.field(default_factory=list)


class PageView(msgspec.Struct, kw_only=True):
    """The page as projected from a request's events up to ``at_seq``."""

    request_id: str
    at_seq: int
    components: list[ComponentView]
    text: str


class RequestView(msgspec.Struct, frozen=True, kw_only=True):
    """The ``requests`` read-model row, as the events alone define it."""

    request_id: str
    mode: str
    track_id: str | None
    element_id: str | None
    status: str
    last_seq: int
    created_at: datetime
    updated_at: datetime


def position_key(component: ComponentView) -> tuple[int, int, str, int]:
    """Numeric positions in numeric order, then named ones alphabetically; ties by index."""
    if component.position.isdigit():
        return (0, int(component.position), "", component.index)
    return (1, 0, component.position, component.index)


def fold_page(request_id: str, events: Iterable[StoredEvent], at: int | None = None) -> PageView:
    """The page after every event with ``seq <= at`` (all events when ``at`` is None)."""
    by_index: dict[int, ComponentView] = {}
    parents: dict[int, int | None] = {}
    content: dict[int, list[str]] = {}
    text: list[str] = []
    last = 0
    for event in events:
        if at is not None and event.seq > at:
            break
        last = event.seq
        match event.payload():
            case ContentBlockStart(index=i, name=name, position=position, parent=parent):
                by_index[i] = ComponentView(
                    index=i, name=name, position=position, status="streaming", content=""
                )
                parents[i] = parent
                content[i] = []
            case ContentBlockDelta(index=i, delta=delta) if i in content:
                content[i].append(delta)
            case ContentBlockStop(index=i, status=status) if i in by_index:
                by_index[i].status = status
            case ResponseChunk(delta=delta):
                text.append(delta)
            case Action(action="update_component", index=i, content=new) if (
                i in content and new is not None
            ):
                content[i] = [new]
            case _:
                pass
    roots: list[ComponentView] = []
    for i, component in by_index.items():
        component.content = "".join(content[i])
        parent = parents[i]
        if parent is not None and parent in by_index:
            by_index[parent].children.append(component)
        else:
            roots.append(component)
    for component in by_index.values():
        component.children.sort(key=position_key)
    roots.sort(key=position_key)
    return PageView(request_id=request_id, at_seq=last, components=roots, text="".join(text))


def fold_request(events: Iterable[StoredEvent]) -> RequestView | None:
    """The read-model row for one request's events; None when there are none."""
    view: RequestView | None = None
    for event in events:
        payload = event.payload()
        if view is None:
            if not isinstance(payload, Created):
                raise ValueError(f"{event.request_id}: first event is {event.type}, not created")
            view = RequestView(
                request_id=event.request_id,
                mode=payload.mode,
                track_id=payload.track_id,
                element_id=element_id_of(payload),
                status="queued",
                last_seq=event.seq,
                created_at=event.at,
                updated_at=event.at,
            )
            continue
        status = status_after(payload) or view.status
        view = msgspec.structs.replace(view, status=status, last_seq=event.seq, updated_at=event.at)
    return view


def element_id_of(created: Created) -> str | None:
    """The editor element a ``field`` request targets, if any."""
    if created.mode != "field":
        return None
    value = created.context.get("element_id")
    return value if isinstance(value, str) else None
