"""The EventLog contract: every backend must pass these unchanged."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select

from app.domain import events as ev
from app.domain.events import UpcasterRegistry
from app.domain.projections import fold_request
from app.store.engine import Engines
from app.store.hub import Hub
from app.store.log import (
    ActiveLimitReached,
    DuplicateRequest,
    ElementBusy,
    EventLog,
    NewRequest,
    RateLimited,
    StreamClosed,
    UnknownRequest,
)
from app.store.queue import WorkQueue
from app.store.tables import events
from app.store.writer import RemoteWriter

pytestmark = pytest.mark.anyio

_ids = itertools.count(1)


def new_id() -> str:
    return f"0190{next(_ids):04x}-0000-7000-8000-000000000000"


async def create(log: EventLog, user: str = "u", key: str | None = None) -> str:
    rid = new_id()
    await log.create(
        NewRequest(request_id=rid, user_id=user, mode="chat", idempotency_key=key),
        [ev.Created(mode="chat", prompt="hi"), ev.Status(status="queued", queue_position=1)],
    )
    return rid


async def test_seq_is_dense_from_one_and_created_comes_first(log: EventLog) -> None:
    rid = await create(log)
    more = await log.append(rid, [ev.Status(status="running"), ev.ResponseChunk(delta="a")])
    assert [e.seq for e in more] == [3, 4]
    stored = await log.read(rid)
    assert [e.seq for e in stored] == [1, 2, 3, 4]
    assert stored[0].type == "created" and stored[0].payload() == ev.Created(
        mode="chat", prompt="hi"
    )
    assert [e.seq for e in await log.read(rid, after=1, limit=2)] == [2, 3]
    backlog = await log.backlog(rid, 1)  # (a stream's page: on SQLite, on the event loop)
    assert backlog == stored[1:], "the same events, every field, as a full read"
    assert stored[2:] == more


async def test_a_request_must_start_with_created(log: EventLog) -> None:
    with pytest.raises(ValueError, match="created"):
        await log.create(NewRequest(request_id=new_id(), user_id="u", mode="chat"), [])
    rid = await create(log)
    with pytest.raises(ValueError, match="created"):
        await log.append(rid, [ev.Created(mode="chat", prompt="again")])


async def test_nothing_follows_the_terminal_event(log: EventLog) -> None:
    rid = await create(log)
    with pytest.raises(ValueError, match="last"):
        await log.append(rid, [ev.Cancelled(reason="x"), ev.Stage(stage="s", progress=1)])
    await log.append(rid, [ev.Complete(content="done")])
    with pytest.raises(StreamClosed):
        await log.append(rid, [ev.Cancelled(reason="late")])
    assert [e.type for e in await log.read(rid)][-1] == "complete"


async def test_unknown_and_duplicate_requests_are_refused(log: EventLog) -> None:
    with pytest.raises(UnknownRequest):
        await log.append(new_id(), [ev.Stage(stage="s", progress=1)])
    rid = await create(log, key="k1")
    with pytest.raises(DuplicateRequest):
        await log.create(
            NewRequest(request_id=rid, user_id="u", mode="chat"),
            [ev.Created(mode="chat", prompt="")],
        )


async def test_a_conflict_in_a_batch_does_not_fail_its_neighbours(log: EventLog) -> None:
    await create(log, key="same-key")
    rid = await create(log)
    results = await asyncio.gather(
        create(log, key="same-key"),
        log.append(rid, [ev.Stage(stage="s", progress=5)]),
        create(log, key="other-key"),
        return_exceptions=True,
    )
    assert isinstance(results[0], DuplicateRequest)
    assert not isinstance(results[1], BaseException) and not isinstance(results[2], BaseException)
    assert (await log.get(rid)) is not None and (await log.get(rid)).last_seq == 3  # type: ignore[union-attr]


async def test_read_model_is_updated_with_its_events(log: EventLog) -> None:
    rid = await create(log, user="ana")
    await log.append(rid, [ev.Status(status="running")])
    record = await log.get(rid)
    assert record is not None and (record.status, record.last_seq) == ("running", 3)
    await log.append(rid, [ev.Error(code="x", message="m")])
    record = await log.get(rid)
    view = fold_request(await log.read(rid))
    assert record is not None and view is not None
    assert (record.status, record.last_seq, record.updated_at) == (
        view.status,
        view.last_seq,
        view.updated_at,
    )
    assert record.status == "failed" and record.user_id == "ana"


async def test_one_group_commit_moves_every_head_and_the_statuses_it_changes(
    log: EventLog,
) -> None:
    # Heads whose status stays take another statement than those whose status moves; in
    # one group commit, each gets its own.
    running, queued, finishing, again, starting = [await create(log) for _ in range(5)]
    for rid in (running, finishing, again):
        await log.append(rid, [ev.Status(status="running")])
    before = {rid: await log.get(rid) for rid in (running, queued, finishing, again, starting)}
    created = new_id()
    commits = log.stats.commits
    results = await asyncio.gather(
        log.append(running, [ev.ResponseChunk(delta="a"), ev.ResponseChunk(delta="b")]),
        log.append(queued, [ev.Stage(stage="waiting", progress=0)]),
        log.append(finishing, [ev.ResponseChunk(delta="c"), ev.Complete(content="c")]),
        log.append(finishing, [ev.ResponseChunk(delta="too late")]),
        log.append(again, [ev.Status(status="running"), ev.ResponseChunk(delta="d")]),
        log.append(starting, [ev.Status(status="running")]),
        log.append(starting, [ev.ResponseChunk(delta="e")]),
        log.create(
            NewRequest(request_id=created, user_id="u", mode="chat"),
            [ev.Created(mode="chat", prompt="hi"), ev.Status(status="queued")],
        ),
        return_exceptions=True,
    )
    assert log.stats.commits == commits + 1
    assert isinstance(results[3], StreamClosed)
    assert not any(isinstance(r, BaseException) for i, r in enumerate(results) if i != 3)
    expected = {
        running: ("running", 5),
        queued: ("queued", 3),
        finishing: ("completed", 5),
        again: ("running", 5),
        starting: ("running", 4),
    }
    for rid, (status, last_seq) in expected.items():
        record, old = await log.get(rid), before[rid]
        view = fold_request(await log.read(rid))
        assert record is not None and old is not None and view is not None
        assert (
            (record.status, record.last_seq) == (status, last_seq) == (view.status, view.last_seq)
        )
        assert record.updated_at == view.updated_at > old.updated_at
    record = await log.get(created)
    assert record is not None and (record.status, record.last_seq) == ("queued", 2)


async def test_the_ids_an_append_returns_are_the_stored_ones(log: EventLog) -> None:
    rids = [await create(log) for _ in range(3)]
    batches = await asyncio.gather(
        *(log.append(rid, [ev.ResponseChunk(delta=str(n)) for n in range(4)]) for rid in rids)
    )
    for rid, returned in zip(rids, batches, strict=True):
        stored = await log.read(rid, after=2)
        assert [(e.id, e.seq, e.at) for e in returned] == [(e.id, e.seq, e.at) for e in stored]
    ids = sorted(e.id for batch in batches for e in batch)
    assert len(set(ids)) == 12


async def test_an_idle_writer_is_not_behind(log: EventLog) -> None:
    rid = await create(log)
    await log.append(rid, [ev.ResponseChunk(delta="x")])
    assert log.write_delay_s() == 0.0


async def test_concurrent_appends_are_group_committed(log: EventLog) -> None:
    ids = [await create(log) for _ in range(20)]
    commits_before = log.stats.commits

    async def writer(rid: str) -> None:
        for n in range(10):
            await log.append(rid, [ev.ResponseChunk(delta=str(n))])

    await asyncio.gather(*(writer(rid) for rid in ids))
    commits = log.stats.commits - commits_before
    assert commits < 200 / 4, f"{commits} commits for 200 appends"
    for rid in ids:
        assert [e.seq for e in await log.read(rid)] == list(range(1, 13))


async def test_timestamps_are_utc_with_microseconds(log: EventLog) -> None:
    rid = await create(log)
    (stored,) = await log.read(rid, after=1)
    assert stored.at.tzinfo is not None and stored.at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert stored.at == (await log.read(rid, after=1))[0].at
    assert abs((datetime.now(UTC) - stored.at).total_seconds()) < 60


async def test_subscription_sends_backlog_then_live_each_once(log: EventLog) -> None:
    rid = await create(log)
    got: list[int] = []
    with log.subscribe(rid, after=1) as sub:
        writer = asyncio.create_task(
            log.append(rid, [ev.ResponseChunk(delta="x"), ev.Complete(content="x")])
        )
        while not sub.finished:
            got.extend(c.seq for c in await sub.next(5.0))
        await writer
    assert got == [2, 3, 4]


async def test_subscription_racing_the_writer_misses_nothing(log: EventLog) -> None:
    for _ in range(10):
        rid = await create(log)

        async def produce(rid: str = rid) -> None:
            for n in range(30):
                await log.append(rid, [ev.ResponseChunk(delta=str(n))])
            await log.append(rid, [ev.Complete(content="")])

        producer = asyncio.create_task(produce())
        await asyncio.sleep(0)  # let some appends land before the subscriber registers
        seqs: list[int] = []
        with log.subscribe(rid, after=0) as sub:
            while not sub.finished:
                seqs.extend(c.seq for c in await sub.next(5.0))
        await producer
        assert seqs == list(range(1, 34))


async def test_a_lagging_subscriber_refills_from_the_log(
    engines: Engines, remote: RemoteWriter | None
) -> None:
    log = EventLog(engines, remote=remote)
    log.hub._limit = 2  # a tiny mailbox: the subscriber falls behind at once
    await log.start()
    try:
        rid = await create(log)
        with log.subscribe(rid, after=0) as sub:
            first = await sub.next(5.0)
            for n in range(10):
                await log.append(rid, [ev.ResponseChunk(delta=str(n))])
            await log.append(rid, [ev.Complete(content="")])
            seqs = [c.seq for c in first]
            while not sub.finished:
                seqs.extend(c.seq for c in await sub.next(5.0))
        assert seqs == list(range(1, 14))
    finally:
        await log.close()


@pytest.mark.parametrize("tail_events", [2, 128])
async def test_a_subscriber_joining_mid_stream_gets_each_event_once(
    engines: Engines, remote: RemoteWriter | None, tail_events: int
) -> None:
    # With a tail of 2, what the subscriber missed is older than the hub keeps: it comes
    # from the database; with 128 it comes from memory. Either way the stream is exact.
    log = EventLog(engines, hub=Hub(tail_events=tail_events), remote=remote)
    await log.start()
    try:
        rid = await create(log)
        for n in range(5):
            await log.append(rid, [ev.ResponseChunk(delta=str(n))])
        cached = log.hub.tail(rid, 3)
        assert (cached is None) == (tail_events == 2)
        with log.subscribe(rid, after=3) as sub:
            seqs = [c.seq for c in await sub.next(5.0)]
            await log.append(rid, [ev.ResponseChunk(delta="late"), ev.Complete(content="")])
            while not sub.finished:
                seqs.extend(c.seq for c in await sub.next(5.0))
        assert seqs == [4, 5, 6, 7, 8, 9]
        assert log.hub.tail(rid, 0) is None, "the tail goes with the terminal event"
        with log.subscribe(rid, after=7) as sub:
            assert [c.seq for c in await sub.next(5.0)] == [8, 9]
    finally:
        await log.close()


async def test_the_log_keeps_tails_only_where_a_backlog_read_is_a_round_trip(
    engines: Engines, remote: RemoteWriter | None
) -> None:
    # On SQLite a stream's backlog is a lookup on the event loop, cheaper than holding a
    # tail; on PostgreSQL it is a round trip to the server, which the tail saves.
    log = EventLog(engines, remote=remote)
    await log.start()
    try:
        rid = await create(log)
        await log.append(rid, [ev.ResponseChunk(delta="a"), ev.ResponseChunk(delta="b")])
        cached = log.hub.tail(rid, 2)
        assert (cached is not None) == engines.postgres
        with log.subscribe(rid, after=2) as sub:
            seqs = [c.seq for c in await sub.next(5.0)]
            await log.append(rid, [ev.Complete(content="ab")])
            while not sub.finished:
                seqs.extend(c.seq for c in await sub.next(5.0))
        assert seqs == [3, 4, 5]
    finally:
        await log.close()


async def test_stored_old_payload_versions_are_upcast_on_read(engines: Engines) -> None:
    registry = UpcasterRegistry({**ev.CURRENT_VERSION, "stage": 2})

    @registry.register("stage", 1)
    def percent_to_progress(fields: dict[str, object]) -> dict[str, object]:
        fields = dict(fields)
        fields["progress"] = fields.pop("percent")
        return fields

    log = EventLog(engines, upcasters=registry)
    await log.start()
    try:
        rid = await create(log)
        async with engines.write.begin() as conn:
            await conn.execute(
                insert(events).values(
                    request_id=rid,
                    seq=3,
                    type="stage",
                    v=1,
                    at=datetime.now(UTC),
                    data='{"stage":"generating","percent":40,"message":""}',
                )
            )
        (old,) = await log.read(rid, after=2)
        assert old.payload() == ev.Stage(stage="generating", progress=40)
        assert await log.backlog(rid, 2) == [old], "a stream's backlog is upcast too"
        async with engines.read.connect() as conn:
            raw = await conn.scalar(select(events.c.data).where(events.c.seq == 3))
        assert "percent" in raw, "upcasting happens on read; the stored row is untouched"
    finally:
        await log.close()


async def claimed(queue: WorkQueue, limit: int = 1) -> list[str]:
    return [c.request_id for c in await queue.claim(limit)]


async def test_queue_claims_oldest_once(log: EventLog, engines: Engines) -> None:
    # Leases of zero length: every claim is immediately "expired", as a dead node's would be.
    queue = WorkQueue(engines, owner="node-a", lease_s=0)
    first, second = await create(log), await create(log)
    claims = await asyncio.gather(claimed(queue), claimed(queue), claimed(queue))
    assert sorted(rid for c in claims for rid in c) == sorted([first, second])
    assert claims.count([]) == 1
    assert await queue.release_unstarted() == 2
    assert await claimed(queue) == [first]
    await log.append(first, [ev.Status(status="running")])
    assert await queue.orphaned_running() == [first]
    live = WorkQueue(engines, owner="node-b", lease_s=60)
    assert await claimed(live) == [second]
    await log.append(second, [ev.Status(status="running")])
    assert await live.orphaned_running() == [first], "a live lease is not orphaned"


async def test_the_log_numbers_new_requests_by_their_place_in_the_queue(
    log: EventLog, engines: Engines
) -> None:
    async def position_of(rid: str) -> int | None:
        (_, queued) = await log.read(rid)
        status = queued.payload()
        assert isinstance(status, ev.Status)
        return status.queue_position

    first = await create(log)
    together = await asyncio.gather(*(create(log) for _ in range(3)))
    assert await position_of(first) == 1
    assert sorted([await position_of(rid) for rid in together]) == [2, 3, 4]
    await log.append(first, [ev.Status(status="running")])
    assert await position_of(await create(log)) == 4, "a running request has left the queue"


async def test_a_batch_claim_takes_the_oldest_in_order_with_their_created_events(
    log: EventLog, engines: Engines
) -> None:
    queue = WorkQueue(engines, owner="node-a", lease_s=60)
    ids = [await create(log) for _ in range(5)]
    batch = await queue.claim(3)
    assert [c.request_id for c in batch] == ids[:3]
    for claim in batch:
        assert claim.created is not None
        assert claim.created.seq == 1
        assert isinstance(claim.created.payload(), ev.Created)
        # The claim reads the event its own way (plain statements on SQLite): the same.
        assert claim.created == (await log.read(claim.request_id))[0]
    rest = await queue.claim(10)
    assert [c.request_id for c in rest] == ids[3:], "nothing is claimed twice"
    assert await queue.claim(10) == []


async def test_the_active_limit_holds_under_concurrent_creations(log: EventLog) -> None:
    async def attempt(n: int) -> str:
        rid = new_id()
        await log.create(
            NewRequest(request_id=rid, user_id="busy", mode="chat", max_active=3),
            [ev.Created(mode="chat", prompt=str(n))],
        )
        return rid

    results = await asyncio.gather(*(attempt(n) for n in range(12)), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, str)]
    assert len(admitted) == 3
    refused = [r for r in results if not isinstance(r, str)]
    assert all(isinstance(r, ActiveLimitReached) and r.limit == 3 for r in refused)
    await log.append(admitted[0], [ev.Cancelled(reason="make room")])
    await attempt(99)


async def test_the_rate_limit_counts_one_users_requests_of_a_mode(log: EventLog) -> None:
    async def attempt(user: str, mode: ev.Mode = "chat") -> str:
        rid = new_id()
        await log.create(
            NewRequest(request_id=rid, user_id=user, mode=mode, max_per_minute=2),
            [ev.Created(mode=mode, prompt="p")],
        )
        return rid

    await attempt("quick")
    await attempt("quick")
    with pytest.raises(RateLimited) as refused:
        await attempt("quick")
    assert refused.value.limit == 2 and 1 <= refused.value.retry_after_s <= 60
    assert isinstance(await attempt("quick", mode="generate"), str), "a limit per mode"
    assert isinstance(await attempt("someone-else"), str), "and per user"


async def test_one_active_request_per_user_and_element(log: EventLog) -> None:
    async def attempt(user: str) -> str:
        rid = new_id()
        await log.create(
            NewRequest(request_id=rid, user_id=user, mode="field", element_id="Hero-1_custom_t"),
            [ev.Created(mode="field", prompt="p")],
        )
        return rid

    results = await asyncio.gather(*(attempt("ed") for _ in range(5)), return_exceptions=True)
    (winner,) = [r for r in results if isinstance(r, str)]
    assert all(
        isinstance(r, ElementBusy) and r.request_id == winner for r in results if r != winner
    )
    assert isinstance(await attempt("someone-else"), str)
