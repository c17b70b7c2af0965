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
    user_id: str | None
    mode: str
    track_id: str | None
    element_id: str | None
    parent_request_id: str | None
    idempotency_key: str | None
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
    """The page after every event with ``seq <= at`` (all events when ``at`` is None).

    A generation's page is built from its content blocks; an edit request's page starts
    as the ``context.page`` it was given and has its ``action`` events applied.
    """
    page = _PageFold()
    last = 0
    for event in events:
        if at is not None and event.seq > at:
            break
        last = event.seq
        page.apply(event.payload())
    return PageView(request_id=request_id, at_seq=last, components=page.roots(), text=page.text())


class _PageFold:
    """Mutable state of one page fold."""

    def __init__(self) -> None:
        self.by_index: dict[int, ComponentView] = {}
        self.parents: dict[int, int | None] = {}
        self.content: dict[int, list[str]] = {}
        self.removed: set[int] = set()
        self.chunks: list[str] = []

    def apply(self, payload: object) -> None:
        match payload:
            case Created(mode="edit", context=context):
                self.seed(context.get("page"))
            case ContentBlockStart(index=i, name=name, position=position, parent=parent):
                self.add(i, name, position, "streaming", "", parent)
            case ContentBlockDelta(index=i, delta=delta) if i in self.content:
                self.content[i].append(delta)
            case ContentBlockStop(index=i, status=status) if i in self.by_index:
                self.by_index[i].status = status
            case ResponseChunk(delta=delta):
                self.chunks.append(delta)
            case Action(action="update_component", index=int(i), content=str(new)) if (
                i in self.by_index
            ):
                self.content[i] = [new]
                if payload.name:
                    self.by_index[i].name = payload.name
            case Action(action="insert_component", name=str(name), content=str(new)):
                i = max(self.by_index, default=-1) + 1
                after = payload.after_index
                parent = self.parents.get(after) if after is not None else None
                self.add(i, name, payload.position or str(i), "ok", new, parent)
            case Action(action="remove_component", index=int(i)):
                self.removed.add(i)
            case _:
                pass

    def add(
        self, i: int, name: str, position: str, status: str, content: str, parent: int | None
    ) -> None:
        self.by_index[i] = ComponentView(
            index=i, name=name, position=position, status=status, content=""
        )
        self.parents[i] = parent
        self.content[i] = [content] if content else []

    def seed(self, page: object, parent: int | None = None) -> None:
        """Components of a page given as input (as the page endpoint returns them)."""
        components = page.get("components") if isinstance(page, dict) else page
        if not isinstance(components, list):
            return
        for item in components:
            if not isinstance(item, dict) or not isinstance(item.get("index"), int):
                continue  # the page came from a client: skip what is not a component
            i = item["index"]
            self.add(
                i,
                str(item.get("name", "Component")),
                str(item.get("position", i)),
                str(item.get("status", "ok")),
                str(item.get("content", "")),
                parent,
            )
            self.seed(item.get("children"), i)

    def roots(self) -> list[ComponentView]:
        roots: list[ComponentView] = []
        for i, component in self.by_index.items():
            if i in self.removed or self.parents[i] in self.removed:
                continue
            component.content = "".join(self.content[i])
            parent = self.parents[i]
            if parent is not None and parent in self.by_index:
                self.by_index[parent].children.append(component)
            else:
                roots.append(component)
        for component in self.by_index.values():
            component.children.sort(key=position_key)
        roots.sort(key=position_key)
        return roots

    def text(self) -> str:
        return "".join(self.chunks)


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
                user_id=payload.user_id,
                idempotency_key=payload.idempotency_key,
                mode=payload.mode,
                track_id=payload.track_id,
                element_id=element_id_of(payload),
                parent_request_id=payload.parent_request_id,
                status="queued",
                last_seq=event.seq,
                created_at=event.at,
                updated_at=event.at,
            )
            continue
        status = status_after(payload) or view.status
        view = msgspec.structs.replace(view, status=status, last_seq=event.seq, updated_at=event.at)
    return view


class FieldValue(msgspec.Struct, frozen=True, kw_only=True):
    """The latest generated value of one editor field."""

    element_id: str
    field: str
    value: str
    field_type: str | None
    request_id: str
    generated_at: datetime


class TrackContent(msgspec.Struct, frozen=True, kw_only=True):
    """Every field generated for a track (one document), latest value each."""

    track_id: str
    fields: list[FieldValue]


def fold_track(track_id: str, events: Iterable[StoredEvent]) -> TrackContent:
    """Latest ``set_field`` value per (element, field), from events in commit order."""
    field_types: dict[str, str | None] = {}
    latest: dict[tuple[str, str], FieldValue] = {}
    for event in events:
        match event.payload():
            case Created(context=context):
                kind = context.get("field_type")
                field_types[event.request_id] = kind if isinstance(kind, str) else None
            case Action(action="set_field", element_id=str(element), field=str(name), value=value):
                latest[(element, name)] = FieldValue(
                    element_id=element,
                    field=name,
                    value=value or "",
                    field_type=field_types.get(event.request_id),
                    request_id=event.request_id,
                    generated_at=event.at,
                )
            case _:
                pass
    return TrackContent(track_id=track_id, fields=[latest[k] for k in sorted(latest)])


def element_id_of(created: Created) -> str | None:
    """The editor element a ``field`` request targets, if any."""
    if created.mode != "field":
        return None
    value = created.context.get("element_id")
    return value if isinstance(value, str) else None
