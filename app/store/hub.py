"""In-process wake-ups: the writer hands each committed event to the request's subscribers.

Subscribers get committed events straight from the writer (no per-subscriber database
read on the live path). A subscriber that falls behind by more than its buffer is marked
lagged and refills from the database, so a slow client costs memory only up to a bound.

On PostgreSQL the hub also keeps the tail of each stream this process is writing: its
latest committed events, from ``created`` on, while it runs. A client connecting or
resuming mid-stream gets its backlog from there instead of the database, as long as the
tail still reaches back to what the client last saw. A tail is dropped at the terminal
event, when it has a gap (another node appended), and, oldest first, past a cap on their
number; while a NOTIFY has announced a seq the tail does not have yet, it serves no one.
On SQLite the log keeps no tails (``tails=0``): there a backlog page is read on the event
loop in tens of microseconds, and a tail cost about 12 KB per running stream
(docs/benchmarks.md, "Tails on SQLite, measured and dropped").
"""

from __future__ import annotations

import sys
from collections import defaultdict, deque
from collections.abc import Iterable

from app.domain.events import StoredEvent, envelope_json
from app.wakeup import Wakeup


class Committed:
    """A committed event as its subscribers send it: its client JSON (``envelope``:
    ``request_id``, ``seq``, ``type``, ``at`` and the payload), encoded once for all of
    them, and the few fields they look at.

    It keeps no reference to the decoded event, whose payload the JSON repeats: tails (on
    PostgreSQL) hold thousands of these (docs/benchmarks.md, "Lighter per-stream objects").
    """

    __slots__ = ("at", "envelope", "seq", "terminal", "type")

    def __init__(self, event: StoredEvent) -> None:
        self.seq = event.seq
        self.type = sys.intern(event.type)
        self.at = event.at
        self.terminal = event.terminal
        self.envelope = envelope_json(event)


class Mailbox:
    """One subscriber's bounded buffer of committed events."""

    __slots__ = ("_items", "_limit", "_wakeup", "high_seq", "lagged")

    def __init__(self, limit: int) -> None:
        self._items: list[Committed] = []
        self._limit = limit
        self._wakeup = Wakeup()
        self.lagged = False
        self.high_seq = 0

    def poke(self, seq: int) -> None:
        """Another node committed up to ``seq``: if that is news, refill from the log."""
        if seq > self.high_seq:
            self.lagged = True
            self._wakeup.set()

    def put(self, item: Committed) -> None:
        self.high_seq = max(self.high_seq, item.seq)
        if len(self._items) >= self._limit:
            self._items.clear()
            self.lagged = True
        else:
            self._items.append(item)
        self._wakeup.set()

    def take(self) -> list[Committed]:
        """Everything buffered, oldest first."""
        items, self._items = self._items, []
        self._wakeup.clear()
        return items

    async def wait(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` for something to arrive; False when nothing did."""
        if self._items or self.lagged:
            return True
        return await self._wakeup.wait(wait_s)

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
        return self.items[-1].seq

    @property
    def behind(self) -> bool:
        """Whether a commit was announced that the tail does not hold (yet)."""
        return self.announced > self.last_seq


TAILS = 10_000
"""How many streams' tails a hub keeps at most, by default: the oldest goes first."""


class Hub:
    """Routes committed events to the mailboxes registered for their request, and keeps
    the tails of at most ``tails`` streams (none when 0)."""

    def __init__(
        self, mailbox_limit: int = 4_096, *, tail_events: int = 128, tails: int = TAILS
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
        if tail is None or tail.behind or tail.items[0].seq > after + 1:
            return None
        return [item for item in tail.items if item.seq > after]

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

    def publish(self, events: Iterable[StoredEvent]) -> None:
        """Deliver committed events to their request's subscribers, and keep their tails."""
        for event in events:
            boxes = self._boxes.get(event.request_id)
            tail = self._continued_tail(event)
            starts = event.seq == 1 and self._max_tails > 0
            if not (boxes or tail or starts):
                continue  # no one here sends it or keeps it: it is not even encoded
            item = Committed(event)
            if tail is not None:
                tail.items.append(item)
            elif starts:
                self._start_tail(event.request_id, item)
            for box in boxes or ():
                box.put(item)

    def _continued_tail(self, event: StoredEvent) -> _Tail | None:
        """The tail ``event`` continues, if any; a tail it does not continue is dropped."""
        tail = self._tails.get(event.request_id) if event.seq > 1 else None
        if tail is None:
            return None
        if tail.last_seq + 1 == event.seq and not event.terminal:
            return tail
        del self._tails[event.request_id]  # a gap (another node appended), or the end
        return None

    def _start_tail(self, request_id: str, item: Committed) -> None:
        tails = self._tails
        tails[request_id] = _Tail(item, self._tail_events)
        if len(tails) > self._max_tails:
            del tails[next(iter(tails))]

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
