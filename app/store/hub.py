"""In-process wake-ups: the writer hands each committed event to the request's subscribers.

Subscribers get committed events straight from the writer (no per-subscriber database
read on the live path). A subscriber that falls behind by more than its buffer is marked
lagged and refills from the database, so a slow client costs memory only up to a bound.

The hub also keeps the tail of each stream this process is writing: its latest committed
events, from ``created`` on, while it runs. With workers, only the worker that created a
stream keeps its tail, extended with the events the others ship (at 1,000 streams, a
tail of every stream in every worker was a fifth of a worker's memory,
docs/benchmarks.md). A client connecting or resuming mid-stream
gets its backlog from there instead of the database, as long as the tail still reaches
back to what the client last saw. A tail is dropped at the terminal event, when it has a
gap (another node appended), and, oldest first, past a cap on their number; while a
NOTIFY has announced a seq the tail does not have yet, it serves no one.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Iterable

from app.domain.events import StoredEvent, envelope_json


class Committed:
    """A committed event plus its client JSON, encoded at most once for all subscribers."""

    __slots__ = ("_envelope", "event")

    def __init__(self, event: StoredEvent) -> None:
        self.event = event
        self._envelope: bytes | None = None

    @property
    def envelope(self) -> bytes:
        """The JSON sent to clients (``request_id``, ``seq``, ``type``, ``at``, payload)."""
        if self._envelope is None:
            self._envelope = envelope_json(self.event)
        return self._envelope


class Mailbox:
    """One subscriber's bounded buffer of committed events."""

    __slots__ = ("_items", "_limit", "_wakeup", "high_seq", "lagged")

    def __init__(self, limit: int) -> None:
        self._items: deque[Committed] = deque()
        self._limit = limit
        self._wakeup = asyncio.Event()
        self.lagged = False
        self.high_seq = 0

    def poke(self, seq: int) -> None:
        """Another node committed up to ``seq``: if that is news, refill from the log."""
        if seq > self.high_seq:
            self.lagged = True
            self._wakeup.set()

    def put(self, item: Committed) -> None:
        self.high_seq = max(self.high_seq, item.event.seq)
        if len(self._items) >= self._limit:
            self._items.clear()
            self.lagged = True
        else:
            self._items.append(item)
        self._wakeup.set()

    def take(self) -> list[Committed]:
        """Everything buffered, oldest first."""
        items = list(self._items)
        self._items.clear()
        self._wakeup.clear()
        return items

    async def wait(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` for something to arrive; False when nothing did."""
        if self._items or self.lagged:
            return True
        try:
            async with asyncio.timeout(wait_s):
                await self._wakeup.wait()
        except TimeoutError:
            return False
        return True

    def wake(self) -> None:
        """Wake the subscriber without an event (e.g. the service is shutting down)."""
        self._wakeup.set()


class _Tail:
    """A stream's latest committed events, and the highest seq a NOTIFY announced."""

    __slots__ = ("announced", "items")

    def __init__(self, first: Committed, limit: int) -> None:
        self.items: deque[Committed] = deque([first], maxlen=limit)
        self.announced = 0

    @property
    def last_seq(self) -> int:
        return self.items[-1].event.seq

    @property
    def behind(self) -> bool:
        """Whether a commit was announced that the tail does not hold (yet)."""
        return self.announced > self.last_seq


class Hub:
    """Routes committed events to the mailboxes registered for their request."""

    def __init__(
        self, mailbox_limit: int = 4_096, *, tail_events: int = 128, tails: int = 10_000
    ) -> None:
        self._boxes: defaultdict[str, set[Mailbox]] = defaultdict(set)
        self._limit = mailbox_limit
        self._tails: dict[str, _Tail] = {}
        self._tail_events = tail_events
        self._max_tails = tails

    def tail(self, request_id: str, after: int) -> list[Committed] | None:
        """The committed events of ``request_id`` after ``after``, if the tail has them all;
        None when the database must be read."""
        tail = self._tails.get(request_id)
        if tail is None or tail.behind or tail.items[0].event.seq > after + 1:
            return None
        return [item for item in tail.items if item.event.seq > after]

    def register(self, request_id: str) -> Mailbox:
        """A new mailbox for ``request_id``; register it *before* reading the backlog."""
        box = Mailbox(self._limit)
        self._boxes[request_id].add(box)
        return box

    def unregister(self, request_id: str, box: Mailbox) -> None:
        """Stop delivering to ``box``."""
        boxes = self._boxes.get(request_id)
        if boxes is None:
            return
        boxes.discard(box)
        if not boxes:
            del self._boxes[request_id]

    def publish(self, events: Iterable[StoredEvent], *, own: bool = True) -> None:
        """Deliver committed events to their request's subscribers, and keep their tails.

        A tail starts only at a ``created`` this process committed (``own``): events
        another worker committed (``own=False``) extend a tail that exists here but never
        start one, so each stream has one tail on the machine, in the worker that took
        its POST, whichever worker runs it."""
        tails = self._tails
        for event in events:
            item = Committed(event)
            if own or (event.seq != 1 and event.request_id in tails):
                self._keep(item)
            for box in self._boxes.get(event.request_id, ()):
                box.put(item)

    def _keep(self, item: Committed) -> None:
        event, tails = item.event, self._tails
        tail = tails.get(event.request_id)
        if event.seq == 1:
            tails[event.request_id] = _Tail(item, self._tail_events)
            if len(tails) > self._max_tails:
                del tails[next(iter(tails))]
        elif tail is not None and tail.last_seq + 1 == event.seq and not event.terminal:
            tail.items.append(item)
        elif tail is not None:
            del tails[event.request_id]  # a gap (another node appended), or the end

    def forget_tails(self) -> None:
        """Drop every tail (events may have gone missing on their way to this process)."""
        self._tails.clear()

    def poke(self, request_id: str, seq: int) -> None:
        """A commit reached ``seq`` on ``request_id`` (a NOTIFY from PostgreSQL: another
        node's commit, or this node's own, which may arrive before its events do)."""
        tail = self._tails.get(request_id)
        if tail is not None:
            tail.announced = max(tail.announced, seq)
        for box in self._boxes.get(request_id, ()):
            box.poke(seq)

    def wake_all(self) -> None:
        """Wake every subscriber (used at shutdown)."""
        for boxes in self._boxes.values():
            for box in boxes:
                box.wake()
