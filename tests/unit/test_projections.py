"""Pure folds: the page at any seq, and the requests read model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.domain import events as ev
from app.domain.events import StoredEvent, encode_payload, event_type
from app.domain.projections import fold_page, fold_request

T0 = datetime(2026, 11, 21, tzinfo=UTC)


def stored(payloads: list[ev.Payload], request_id: str = "r") -> list[StoredEvent]:
    return [
        StoredEvent(
            id=n,
            request_id=request_id,
            seq=n,
            type=event_type(p),
            at=T0 + timedelta(seconds=n),
            data=encode_payload(p),
        )
        for n, p in enumerate(payloads, 1)
    ]


EVENTS = stored(
    [
        ev.Created(mode="generate", prompt="p"),
        ev.Status(status="running"),
        ev.ResponseChunk(delta="Hello "),
        ev.ContentBlockStart(index=0, name="Footer", position="9"),
        ev.ContentBlockDelta(index=0, delta="<footer>"),
        ev.ContentBlockStart(index=1, name="Hero", position="1"),
        ev.ContentBlockStart(index=2, name="Badge", position="0", parent=1),
        ev.ContentBlockDelta(index=2, delta="*"),
        ev.ContentBlockStop(index=2, size=1),
        ev.ContentBlockStop(index=1, size=0),
        ev.ContentBlockDelta(index=0, delta="</footer>"),
        ev.ContentBlockStop(index=0, size=17),
        ev.ResponseChunk(delta="world"),
        ev.Complete(content="..."),
    ]
)


def test_full_page_in_position_order_with_children() -> None:
    page = fold_page("r", EVENTS)
    assert page.at_seq == 14 and page.text == "Hello world"
    assert [(c.name, c.status) for c in page.components] == [("Hero", "ok"), ("Footer", "ok")]
    assert page.components[1].content == "<footer></footer>"
    (badge,) = page.components[0].children
    assert (badge.name, badge.content) == ("Badge", "*")


def test_time_travel() -> None:
    page = fold_page("r", EVENTS, at=5)
    assert page.at_seq == 5 and page.text == "Hello "
    (footer,) = page.components
    assert (footer.status, footer.content) == ("streaming", "<footer>")
    assert fold_page("r", EVENTS, at=0).components == []


def test_projecting_twice_gives_the_same_page() -> None:
    assert fold_page("r", EVENTS) == fold_page("r", EVENTS)


def test_request_read_model_from_events() -> None:
    view = fold_request(EVENTS)
    assert view is not None
    assert (view.status, view.last_seq, view.mode) == ("completed", 14, "generate")
    assert view.created_at == T0 + timedelta(seconds=1)
    assert view.updated_at == T0 + timedelta(seconds=14)
    assert fold_request([]) is None
