"""The hub's stream tails: what a connecting subscriber can be served from memory."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from app.domain.events import StoredEvent, envelope_json
from app.store.hub import Hub

AT = datetime(2026, 11, 21, tzinfo=UTC)


def event(rid: str, seq: int, type_: str = "response_chunk") -> StoredEvent:
    return StoredEvent(id=seq, request_id=rid, seq=seq, type=type_, at=AT, data=b"{}")


def seqs(items: object) -> list[int]:
    assert isinstance(items, list)
    return [item.seq for item in items]


def test_a_tail_starts_at_created_and_serves_any_resume_point() -> None:
    hub = Hub()
    hub.publish([event("a", 1, "created"), event("a", 2), event("a", 3)])
    assert seqs(hub.tail("a", 0)) == [1, 2, 3]
    assert seqs(hub.tail("a", 2)) == [3]
    assert hub.tail("a", 3) == []
    assert hub.tail("b", 0) is None, "no tail for a stream this process never saw created"


def test_a_hub_of_no_tails_still_delivers_to_its_subscribers() -> None:
    hub = Hub(tails=0)
    box = hub.register("a")
    hub.publish([event("a", 1, "created"), event("a", 2)])
    assert hub.tail("a", 0) is None
    assert seqs(box.take()) == [1, 2]


def test_a_tail_keeps_only_its_latest_events() -> None:
    hub = Hub(tail_events=2)
    hub.publish([event("a", n, "created" if n == 1 else "response_chunk") for n in (1, 2, 3)])
    assert hub.tail("a", 0) is None, "seq 1 is gone: the database must serve it"
    assert seqs(hub.tail("a", 1)) == [2, 3]


def test_a_gap_or_the_terminal_event_drops_the_tail() -> None:
    hub = Hub()
    hub.publish([event("a", 1, "created"), event("a", 3)])
    assert hub.tail("a", 0) is None
    hub.publish([event("b", 1, "created"), event("b", 2), event("b", 3, "complete")])
    assert hub.tail("b", 0) is None


def test_a_tail_serves_no_one_while_a_notify_is_ahead_of_it() -> None:
    hub = Hub()
    hub.publish([event("a", 1, "created"), event("a", 2)])
    hub.poke("a", 2)
    assert seqs(hub.tail("a", 0)) == [1, 2], "a notification of what it holds changes nothing"
    hub.poke("a", 3)
    assert hub.tail("a", 0) is None, "seq 3 was committed; the tail does not have it"
    hub.publish([event("a", 3)])
    assert seqs(hub.tail("a", 1)) == [2, 3], "our own commit's events arrived after its NOTIFY"


def test_another_nodes_commit_leaves_a_gap_that_drops_the_tail() -> None:
    hub = Hub()
    hub.publish([event("a", 1, "created"), event("a", 2)])
    hub.poke("a", 3)  # another node's seq 3
    hub.publish([event("a", 4)])  # then ours
    assert hub.tail("a", 0) is None
    hub.publish([event("a", 5)])
    assert hub.tail("a", 0) is None, "a dropped tail is not restarted mid-stream"


def test_the_oldest_tails_go_first_past_the_cap() -> None:
    hub = Hub(tails=2)
    for rid in ("a", "b", "c"):
        hub.publish([event(rid, 1, "created")])
    assert hub.tail("a", 0) is None
    assert seqs(hub.tail("b", 0)) == [1]
    assert seqs(hub.tail("c", 0)) == [1]


def test_what_a_subscriber_gets_is_the_client_json_and_not_the_decoded_event() -> None:
    hub = Hub()
    box = hub.register("a")
    created = event("a", 1, "created")
    hub.publish([created])
    (item,) = box.take()
    assert (item.seq, item.type, item.at, item.terminal) == (1, "created", AT, False)
    assert item.envelope == envelope_json(created)
    assert not hasattr(item, "event"), "the decoded event is not kept"
    (kept,) = hub.tail("a", 0) or []
    assert kept is item, "the tail holds the same object, encoded once"


@pytest.mark.anyio
async def test_a_mailbox_wait_ends_empty_then_wakes_for_the_next_event() -> None:
    hub = Hub()
    box = hub.register("a")
    assert await box.wait(0.0) is False
    waiting = asyncio.create_task(box.wait(60.0))
    await asyncio.sleep(0)  # let it start waiting
    hub.publish([event("a", 1, "created")])
    assert await waiting is True
    assert seqs(box.take()) == [1]
