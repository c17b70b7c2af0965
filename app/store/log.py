"""The event log: group-committed appends, reads, and live subscriptions.

One writer task per process owns every write to ``events`` and ``requests``. Producers
enqueue appends and await their commit; the writer folds whatever is waiting into one
transaction (group commit), assigns each request's next dense ``seq`` inside it, updates
the ``requests`` read model in the same transaction, and only after the commit hands the
events to subscribers. So a client is never sent an event a crash could take back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec
from sqlalchemy import Connection, Integer, Row, Select, bindparam, func, select
from sqlalchemy.exc import IntegrityError

from app.domain.events import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    UPCASTERS,
    Created,
    Payload,
    Status,
    StoredEvent,
    UpcasterRegistry,
    encode_payload,
    event_type,
    is_terminal,
    status_after,
    utcnow,
)
from app.domain.stats import Histogram
from app.store import sqlite_sql
from app.store.engine import Engines, EventRow, driver_of
from app.store.hub import TAILS, Committed, Hub
from app.store.tables import events, requests, sqlite_datetime, sqlite_text

log = logging.getLogger(__name__)


class AppendRejected(Exception):
    """The log refused an append; nothing of it was written."""


class StreamClosed(AppendRejected):
    """The request already has its terminal event: nothing may follow it."""


class UnknownRequest(AppendRejected):
    """No request with that ID exists."""


class DuplicateRequest(AppendRejected):
    """A request with that ID, or that user's idempotency key, already exists."""


class ActiveLimitReached(AppendRejected):
    """The user already has as many queued or running requests as allowed."""

    def __init__(self, user_id: str, limit: int) -> None:
        super().__init__(f"{user_id} has {limit} active requests")
        self.user_id = user_id
        self.limit = limit

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        return type(self), (self.user_id, self.limit)  # (for the log writer process)


class RateLimited(AppendRejected):
    """The user already created as many requests of this mode in the last minute as allowed."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(f"{limit} new requests per minute")
        self.limit = limit
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return type(self), (self.limit, self.retry_after_s)


class ElementBusy(AppendRejected):
    """The user already has an active request for this editor element."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request {request_id} is already generating this element")
        self.request_id = request_id

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (self.request_id,)


class RequestRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A row of the ``requests`` read model."""

    request_id: str
    user_id: str
    mode: str
    track_id: str | None
    element_id: str | None
    status: str
    last_seq: int
    created_at: datetime
    updated_at: datetime
    idempotency_key: str | None
    parent_request_id: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether the request has ended."""
        return self.status in TERMINAL_STATUSES


class NewRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The header of a request about to be created with its ``created`` event."""

    request_id: str
    user_id: str
    mode: str
    track_id: str | None = None
    element_id: str | None = None
    idempotency_key: str | None = None
    parent_request_id: str | None = None
    max_active: int | None = None
    """Refuse the request when its user already has this many queued or running."""
    max_per_minute: int | None = None
    """Refuse it when its user created this many of its mode in the last 60 seconds."""


DELAY_BOUNDS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(slots=True)
class LogStats:
    """Counters of the writer, for metrics and for proving that commits are grouped."""

    commits: int = 0
    events: int = 0
    appends: int = 0
    largest_batch: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    batch_sizes: Histogram = field(
        default_factory=lambda: Histogram([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
    )
    write_delay_s: Histogram = field(default_factory=lambda: Histogram(DELAY_BOUNDS_S))
    """Per batch of appends: from its oldest append's arrival until every append of the
    batch was answered (committed and published, or refused)."""
    transaction_s: Histogram = field(default_factory=lambda: Histogram(DELAY_BOUNDS_S))
    """Per transaction that committed: from its hand-over to the database's thread (or
    the log writer process) until the event loop had it back (on SQLite, with the turns
    waited at the write lock)."""


@dataclass(slots=True)
class Appending:
    """One append of a group commit: a request's events, and its header when it creates it."""

    request_id: str
    payloads: Sequence[Payload]
    new: NewRequest | None


@dataclass(slots=True)
class _Append(Appending):
    done: asyncio.Future[list[StoredEvent]] = field(repr=False)
    queued_at: float = field(default_factory=time.monotonic)


_STOP = object()

Written = tuple[
    list[list[StoredEvent] | Exception],  # per append: [] once written, or its rejection
    list[tuple[int, int]],  # per append: its span of the written events
    list[tuple[str, int, str, bytes]],  # written events: request ID, seq, type, payload
    list[int],  # their ids
    datetime,  # their commit's timestamp
]


class RemoteCommits(Protocol):
    """Where the group commits run when another process does them (``writer.RemoteWriter``)."""

    async def write(self, batch: Sequence[Appending]) -> Written:
        """Commit ``batch`` as ``EventLog.write_batch`` does, and return what it returns."""
        ...

    async def close(self) -> None:
        """Let go of the connection."""
        ...


BACKLOG_PAGE = 500
"""The events a stream reads from the database at a time (``EventLog.backlog``). On
SQLite, on the event loop: 500 rows cost about 2-3 ms of CPU there, against 4-5 ms
through a reader thread and Core (docs/decisions.md, "SQLite")."""


class EventLog:
    """Append-only log of events keyed by request, with group commit and live tails."""

    def __init__(
        self,
        engines: Engines,
        *,
        hub: Hub | None = None,
        batch_max: int = 1024,
        upcasters: UpcasterRegistry = UPCASTERS,
        poll_s: float | None = None,
        remote: RemoteCommits | None = None,
    ):
        self._engines = engines
        # With other nodes appending, a subscriber also checks the log this often, so a
        # lost NOTIFY delays an event by at most this long.
        self.poll_s = (poll_s or 1.0) if engines.shared else None
        self._upcasters = upcasters
        # With worker processes on SQLite, the group commits run in the log writer
        # process (``store/writer.py``); otherwise on this process's database thread.
        self._remote = remote
        # Tails save a backlog read where it is a round trip to the database; SQLite's is
        # a lookup on the event loop, cheaper than a tail's memory (``store/hub.py``).
        self.hub = hub or Hub(tails=TAILS if engines.postgres else 0)
        self._batch_max = batch_max
        self._queue: asyncio.Queue[_Append | object] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._committing_since: float | None = None
        self.stats = LogStats()
        self.forward: Callable[[list[StoredEvent]], None] | None = None
        """Also gets each commit's events once published here (to other workers)."""

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer task."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="event-log-writer")

    async def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        if self._writer is not None:
            self._queue.put_nowait(_STOP)
            await self._writer
            self._writer = None
        if self._remote is not None:
            await self._remote.close()

    def write_delay_s(self) -> float:
        """How long the appends being committed now have waited (0 when the writer is idle):
        how far behind durability is running."""
        since = self._committing_since
        return 0.0 if since is None else time.monotonic() - since

    # --- writes ---------------------------------------------------------------------------

    async def create(self, new: NewRequest, payloads: Sequence[Payload]) -> list[StoredEvent]:
        """Create a request: its header row and its first events, ``created`` first.

        A ``status{queued}`` among them gets the request's place in the queue, counted
        when it commits.
        """
        if not payloads or not isinstance(payloads[0], Created):
            raise ValueError("a request's first event must be created")
        return await self._submit(new.request_id, payloads, new)

    async def append(self, request_id: str, payloads: Sequence[Payload]) -> list[StoredEvent]:
        """Append events to an existing request; returns them as committed."""
        if not payloads:
            return []
        if any(isinstance(p, Created) for p in payloads):
            raise ValueError("created is only ever a request's first event")
        return await self._submit(request_id, payloads, None)

    async def _submit(
        self, request_id: str, payloads: Sequence[Payload], new: NewRequest | None
    ) -> list[StoredEvent]:
        if self._writer is None:
            raise RuntimeError("the event log writer is not running")
        terminal_at = [i for i, p in enumerate(payloads) if is_terminal(p)]
        if terminal_at and terminal_at[0] != len(payloads) - 1:
            raise ValueError("a terminal event must be the last one appended")
        done: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Append(request_id, payloads, new, done))
        return await done

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            batch: list[_Append] = []
            if first is _STOP:
                stopping = True
            else:
                assert isinstance(first, _Append)
                batch.append(first)
            while len(batch) < self._batch_max and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    stopping = True
                    continue
                assert isinstance(item, _Append)
                batch.append(item)
            if batch:
                self._committing_since = batch[0].queued_at
                try:
                    await self._commit_batch(batch)
                finally:
                    self._committing_since = None
                    self.stats.write_delay_s.observe(time.monotonic() - batch[0].queued_at)

    async def _commit_batch(self, batch: list[_Append]) -> None:
        try:
            outcomes = await self._commit(batch)
        except IntegrityError:
            # One conflicting append (a duplicate idempotency key, or another process that
            # took the same seq) must not fail its neighbours: commit each one alone.
            for item in batch:
                await self._commit_alone(item)
            return
        except Exception as exc:
            log.exception("group commit of %d appends failed", len(batch))
            for item in batch:
                _settle(item, exc)
            return
        self._publish([e for outcome in outcomes if isinstance(outcome, list) for e in outcome])
        for item, outcome in zip(batch, outcomes, strict=True):
            _settle(item, outcome)

    async def _commit_alone(self, item: _Append) -> None:
        try:
            (outcome,) = await self._commit([item])
        except IntegrityError:
            outcome = (
                DuplicateRequest(item.request_id)
                if item.new is not None
                else AppendRejected(f"write conflict on {item.request_id}")
            )
        except Exception as exc:
            log.exception("commit of an append to %s failed", item.request_id)
            outcome = exc
        if isinstance(outcome, list):
            self._publish(outcome)
        _settle(item, outcome)

    def _publish(self, committed: list[StoredEvent]) -> None:
        self.hub.publish(committed)
        if self.forward is not None:
            self.forward(committed)

    async def _commit(self, batch: list[_Append]) -> list[list[StoredEvent] | Exception]:
        handed_over = time.monotonic()
        if self._remote is not None:
            outcomes, spans, written, ids, at = await self._remote.write(batch)
        else:
            outcomes, spans, written, ids, at = await self._engines.transact(
                lambda conn: self.write_batch(conn, batch)
            )
        self.stats.transaction_s.observe(time.monotonic() - handed_over)
        self.stats.commits += 1
        self.stats.events += len(written)
        self.stats.appends += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.batch_sizes.observe(len(batch))
        for _, _, type_, _ in written:
            self.stats.by_type[type_] = self.stats.by_type.get(type_, 0) + 1
        for n, (start, end) in enumerate(spans):
            if start != end:
                outcomes[n] = [
                    StoredEvent(id=ids[k], request_id=rid, seq=seq, type=type_, at=at, data=data)
                    for k, (rid, seq, type_, data) in enumerate(written[start:end], start)
                ]
        return outcomes

    def write_batch(self, conn: Connection, batch: Sequence[Appending]) -> Written:
        """The group commit's checks and statements, in its one transaction (on the
        database's thread, or in the log writer process)."""
        at = utcnow()  # taken once the transaction holds the write lock
        self._engines.serialize_appends(conn)
        state = _load_state(conn, {i.request_id for i in batch if i.new is None})
        # Admission checks run here, inside the write transaction, so that concurrent
        # creations cannot both slip under a limit.
        admission = _load_admission(conn, [i.new for i in batch if i.new is not None], at)
        new_rows: list[dict[str, object]] = []
        event_rows: list[EventRow] = []
        written: list[tuple[str, int, str, bytes]] = []
        outcomes: list[list[StoredEvent] | Exception] = []
        spans: list[tuple[int, int]] = []
        for item in batch:
            rejection = _check(item, state) or admission.admit(item.new)
            if rejection is not None:
                outcomes.append(rejection)
                spans.append((0, 0))
                continue
            payloads = item.payloads
            if item.new is not None:
                new_rows.append(_header_row(item.new))
                state[item.request_id] = _State(0, "queued")
                admission.queued += 1
                payloads = [_with_position(p, admission.queued) for p in payloads]
            current = state[item.request_id]
            start = len(event_rows)
            for payload in payloads:
                current.last_seq += 1
                status = status_after(payload)
                if status is not None and status != current.status:
                    current.status, current.status_changed = status, True
                type_, data = event_type(payload), encode_payload(payload)
                seq, version = current.last_seq, self._upcasters.current_version(type_)
                written.append((item.request_id, seq, type_, data))
                event_rows.append((item.request_id, seq, type_, version, data.decode()))
            current.touched = True
            outcomes.append([])
            spans.append((start, len(event_rows)))
        self._engines.insert_requests(conn, new_rows, at)
        ids = self._engines.insert_events(conn, event_rows, at)
        heads = {
            rid: (s.last_seq, s.status if s.status_changed else None)
            for rid, s in state.items()
            if s.touched
        }
        self._engines.notify_appended(conn, {rid: seq for rid, (seq, _) in heads.items()})
        self._engines.update_heads(conn, heads, at)
        return outcomes, spans, written, ids, at

    # --- reads ----------------------------------------------------------------------------

    async def read(
        self, request_id: str, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """Committed events of ``request_id`` with ``seq > after``, in order, at most
        ``limit``."""
        query, params = _READ, {"rid": request_id, "after": after}
        if limit is not None:
            query, params["limit"] = _READ_PAGE, limit
        rows = await self._engines.query(lambda conn: conn.execute(query, params).all())
        return [stored_event(request_id, row, self._upcasters) for row in rows]

    async def backlog(self, request_id: str, after: int) -> list[StoredEvent]:
        """A stream's next page of ``BACKLOG_PAGE`` events at most after ``after``: on
        SQLite read on the event loop, like ``get``, unless SQLite is busy."""
        params = {"rid": request_id, "after": after, "limit": BACKLOG_PAGE}
        rows: Sequence[Row[Any] | Mapping[str, Any]] = await self._engines.look_up(
            lambda db: sqlite_sql.events_after(db, request_id, after, BACKLOG_PAGE),
            lambda conn: conn.execute(_READ_PAGE, params).all(),
        )
        return [stored_event(request_id, row, self._upcasters) for row in rows]

    async def get(self, request_id: str) -> RequestRecord | None:
        """The read-model row of a request, or None (every stream opened reads it)."""
        return await self._engines.look_up(
            lambda db: _sqlite_record(sqlite_sql.request(db, request_id)),
            lambda conn: _record(conn.execute(_GET, {"rid": request_id}).first()),
        )

    async def find_idempotent(self, user_id: str, key: str) -> RequestRecord | None:
        """The request a user created with this idempotency key, if any."""
        query = select(requests).where(
            requests.c.user_id == user_id, requests.c.idempotency_key == key
        )
        row = await self._engines.query(lambda conn: conn.execute(query).first())
        return None if row is None else record_of(row)

    async def track_fields(self, user_id: str, track_id: str) -> list[StoredEvent]:
        """The ``created`` and ``action`` events of a user's field requests in a track."""
        query = (
            select(events.c.request_id, *EVENT_COLUMNS)
            .join(requests, requests.c.request_id == events.c.request_id)
            .where(
                requests.c.user_id == user_id,
                requests.c.track_id == track_id,
                requests.c.mode == "field",
                events.c.type.in_(["created", "action"]),
            )
            .order_by(events.c.id)
        )
        rows = await self._engines.query(lambda conn: conn.execute(query).all())
        return [stored_event(row.request_id, row, self._upcasters) for row in rows]

    def subscribe(self, request_id: str, after: int) -> Subscription:
        """A live tail of ``request_id`` from ``seq > after``."""
        return Subscription(self, request_id, after)


class Subscription:
    """Each committed event of one request exactly once, in order, then its live tail.

    The mailbox is registered before the backlog is read, so an event committed while
    the backlog query runs is in one or both of them; duplicates are dropped by ``seq``,
    and any gap (a lagged mailbox) is filled from the database. The backlog comes from
    the hub's tail of the stream (PostgreSQL only) when that reaches back far enough, else
    from the database.
    """

    def __init__(self, log: EventLog, request_id: str, after: int) -> None:
        self._log = log
        self.request_id = request_id
        self.last_seq = after
        self.finished = False
        self._box = log.hub.register(request_id)
        self._backlog_done = False

    def close(self) -> None:
        """Stop receiving wake-ups."""
        self._log.hub.unregister(self.request_id, self._box)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    async def next(self, wait_s: float) -> list[Committed]:
        """The next committed events in order; empty on timeout or a bare wake-up."""
        if self.finished:
            return []
        if not self._backlog_done:
            cached = self._log.hub.tail(self.request_id, self.last_seq)
            page = await self._from_db() if cached is None else self._from_tail(cached)
            if page:
                return page
            self._backlog_done = True
        poll = self._log.poll_s
        if not await self._box.wait(wait_s if poll is None else min(wait_s, poll)):
            return [] if poll is None else await self._from_db()
        if self._box.lagged:
            self._box.lagged = False
            self._box.take()
            return await self._from_db()
        out: list[Committed] = []
        for item in self._box.take():
            seq = item.seq
            if seq <= self.last_seq:
                continue
            if seq != self.last_seq + 1:
                return out + await self._from_db()
            out.append(self._advance(item))
            if item.terminal:
                break
        return out

    def _from_tail(self, cached: list[Committed]) -> list[Committed]:
        self._backlog_done = True
        out: list[Committed] = []
        for item in cached:
            out.append(self._advance(item))
            if self.finished:
                break
        return out

    async def _from_db(self) -> list[Committed]:
        rows = await self._log.backlog(self.request_id, self.last_seq)
        out: list[Committed] = []
        for event in rows:
            out.append(self._advance(Committed(event)))
            if self.finished:
                break
        # A full page means there may be more in the database than any wake-up will bring.
        self._backlog_done = len(rows) < BACKLOG_PAGE
        return out

    def _advance(self, item: Committed) -> Committed:
        self.last_seq = item.seq
        self._box.high_seq = max(self._box.high_seq, item.seq)
        if item.terminal:
            self.finished = True
        return item


# --- helpers ------------------------------------------------------------------------------

# The statements every stream runs, built once: building one costs more than running it.
EVENT_COLUMNS = (events.c.id, events.c.seq, events.c.type, events.c.v, events.c.data, events.c.at)
"""What ``stored_event`` reads from a row of the events table."""

_READ = (
    select(*EVENT_COLUMNS)
    .where(events.c.request_id == bindparam("rid"), events.c.seq > bindparam("after"))
    .order_by(events.c.seq)
)
_READ_PAGE = _READ.limit(bindparam("limit", type_=Integer))
_GET = select(requests).where(requests.c.request_id == bindparam("rid"))


@dataclass(slots=True)
class _State:
    last_seq: int
    status: str
    touched: bool = False
    status_changed: bool = False


def _load_state(conn: Connection, request_ids: set[str]) -> dict[str, _State]:
    if not request_ids:
        return {}
    if conn.dialect.name == "sqlite":
        found = sqlite_sql.heads(driver_of(conn), sorted(request_ids))
        return {rid: _State(seq, status) for rid, seq, status in found}
    rows = conn.execute(_STATE, {"ids": sorted(request_ids)})
    return {str(r.request_id): _State(int(r.last_seq), str(r.status)) for r in rows}


_STATE = select(requests.c.request_id, requests.c.last_seq, requests.c.status).where(
    requests.c.request_id.in_(bindparam("ids", expanding=True))
)


RATE_WINDOW = timedelta(minutes=1)


@dataclass(slots=True)
class _Admission:
    at: datetime
    queued: int = 0
    """Requests waiting for a runner: the next one created is at position ``queued + 1``."""
    active: dict[str, int] = field(default_factory=dict)
    elements: dict[tuple[str, str], str] = field(default_factory=dict)
    recent: dict[tuple[str, str], tuple[int, datetime]] = field(default_factory=dict)

    def admit(self, new: NewRequest | None) -> AppendRejected | None:
        """Refuse ``new`` if it breaks a limit; otherwise count it in."""
        if new is None:
            return None
        key = (new.user_id, new.element_id or "")
        if new.element_id and key in self.elements:
            return ElementBusy(self.elements[key])
        active = self.active.get(new.user_id, 0)
        if new.max_active is not None and active >= new.max_active:
            return ActiveLimitReached(new.user_id, new.max_active)
        count, oldest = self.recent.get((new.user_id, new.mode), (0, self.at))
        if new.max_per_minute is not None and count >= new.max_per_minute:
            wait = (oldest + RATE_WINDOW - self.at).total_seconds()
            return RateLimited(new.max_per_minute, max(1, math.ceil(wait)))
        self.active[new.user_id] = active + 1
        self.recent[(new.user_id, new.mode)] = (count + 1, oldest)
        if new.element_id:
            self.elements[key] = new.request_id
        return None


def _load_admission(conn: Connection, news: list[NewRequest], at: datetime) -> _Admission:
    """What the limits need for ``news``; on SQLite as plain statements on the driver's
    connection (``sqlite_sql``), elsewhere as Core (the rare busy-field check is Core)."""
    db = driver_of(conn) if conn.dialect.name == "sqlite" else None
    admission = _Admission(at=at)
    if news:
        admission.queued = _queued(conn) if db is None else sqlite_sql.queued(db)
    users = sorted({n.user_id for n in news if n.max_active is not None})
    if users:
        admission.active = _active(conn, users) if db is None else sqlite_sql.active(db, users)
    rated = [n for n in news if n.max_per_minute is not None]
    if rated:
        who, modes = sorted({n.user_id for n in rated}), sorted({n.mode for n in rated})
        since = at - RATE_WINDOW
        window: Sequence[Any] = (
            conn.execute(rate_window(who, modes, since)).all()
            if db is None
            else sqlite_sql.recent(db, who, modes, sqlite_text(since))
        )
        admission.recent = {
            (str(user), str(mode)): (int(n), aware_utc(oldest)) for user, mode, n, oldest in window
        }
    admission.elements = _busy_elements(conn, news)
    return admission


def _queued(conn: Connection) -> int:
    count = select(func.count()).select_from(requests).where(requests.c.status == "queued")
    return int(conn.scalar(count) or 0)


def _active(conn: Connection, users: list[str]) -> dict[str, int]:
    counts: Any = conn.execute(
        select(requests.c.user_id, func.count())
        .where(requests.c.user_id.in_(users), requests.c.status.in_(ACTIVE_STATUSES))
        .group_by(requests.c.user_id)
    )
    return {str(user): int(n) for user, n in counts}


def _busy_elements(conn: Connection, news: list[NewRequest]) -> dict[tuple[str, str], str]:
    """Which of the new requests' editor fields have a request queued or running already."""
    elements = sorted({n.element_id for n in news if n.element_id})
    if not elements:
        return {}
    rows = conn.execute(
        select(requests.c.request_id, requests.c.user_id, requests.c.element_id).where(
            requests.c.element_id.in_(elements), requests.c.status.in_(ACTIVE_STATUSES)
        )
    )
    return {(str(u), str(e)): str(r) for r, u, e in rows}


def rate_window(users: list[str], modes: list[str], since: datetime) -> Select[Any]:
    """Per user and mode, the requests created after ``since``: how many, and the oldest.

    An index of ``(user_id, mode, created_at)`` answers it alone, already in group order:
    a user who creates requests at a high rate (with a limit raised to match) makes every
    group commit that admits one of theirs count their last minute of requests, inside
    the write transaction, and without the index each of those rows was a table lookup
    and the counts a sort.
    """
    return (
        select(
            requests.c.user_id,
            requests.c.mode,
            func.count().label("n"),
            func.min(requests.c.created_at).label("oldest"),
        )
        .where(
            requests.c.user_id.in_(users),
            requests.c.mode.in_(modes),
            requests.c.created_at > since,
        )
        .group_by(requests.c.user_id, requests.c.mode)
    )


def aware_utc(value: datetime | str) -> datetime:
    """An aggregate's timestamp as aware UTC: aggregates skip the column type, so SQLite
    hands back naive UTC text."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _check(item: Appending, state: dict[str, _State]) -> AppendRejected | None:
    current = state.get(item.request_id)
    if item.new is not None:
        return DuplicateRequest(item.request_id) if current is not None else None
    if current is None:
        return UnknownRequest(item.request_id)
    if current.status in TERMINAL_STATUSES:
        return StreamClosed(item.request_id)
    return None


def _with_position(payload: Payload, position: int) -> Payload:
    """A new request's ``status{queued}`` with its place in the queue, counted at commit."""
    if isinstance(payload, Status) and payload.status == "queued":
        return msgspec.structs.replace(payload, queue_position=position)
    return payload


def _header_row(new: NewRequest) -> dict[str, object]:
    """A new request's row in ``requests``, but its timestamps (the commit's)."""
    return {
        "request_id": new.request_id,
        "user_id": new.user_id,
        "mode": new.mode,
        "track_id": new.track_id,
        "element_id": new.element_id,
        "status": "queued",
        "last_seq": 0,
        "idempotency_key": new.idempotency_key,
        "parent_request_id": new.parent_request_id,
    }


def _settle(item: _Append, outcome: list[StoredEvent] | BaseException) -> None:
    if item.done.done():
        return
    if isinstance(outcome, BaseException):
        item.done.set_exception(outcome)
    else:
        item.done.set_result(outcome)


def stored_event(
    request_id: str, row: Row[Any] | Mapping[str, Any], upcasters: UpcasterRegistry
) -> StoredEvent:
    """A stored event from a row of the events table (or its columns by name), its payload
    upcast."""
    m = row._mapping if isinstance(row, Row) else row
    return StoredEvent(
        id=m["id"],
        request_id=request_id,
        seq=m["seq"],
        type=m["type"],
        at=m["at"],
        data=upcasters.upcast(m["type"], m["v"], m["data"].encode()),
    )


def _record(row: Row[tuple[object, ...]] | None) -> RequestRecord | None:
    return None if row is None else record_of(row)


def _sqlite_record(row: tuple[Any, ...] | None) -> RequestRecord | None:
    """A ``RequestRecord`` from ``sqlite_sql.request``'s row (its timestamps are text)."""
    if row is None:
        return None
    m = dict(zip(sqlite_sql.REQUEST_COLUMNS, row, strict=True))
    m["created_at"] = sqlite_datetime(m["created_at"])
    m["updated_at"] = sqlite_datetime(m["updated_at"])
    return record_from(m)


def record_of(row: Row[tuple[object, ...]]) -> RequestRecord:
    """A ``RequestRecord`` from a row of the ``requests`` table read through Core."""
    return record_from(row._mapping)


def record_from(m: Mapping[Any, Any]) -> RequestRecord:
    """A ``RequestRecord`` from the ``requests`` columns by name (others are ignored)."""
    return RequestRecord(
        request_id=m["request_id"],
        user_id=m["user_id"],
        mode=m["mode"],
        track_id=m["track_id"],
        element_id=m["element_id"],
        status=m["status"],
        last_seq=m["last_seq"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        idempotency_key=m["idempotency_key"],
        parent_request_id=m["parent_request_id"],
    )
