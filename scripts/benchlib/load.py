"""The load generator: N slots, each creating a generation and following its SSE stream.

A slot loops until the measurement window ends: ``POST /assistant/request``, then
``GET /assistant/stream/{id}`` until the terminal event, then the next generation. Like
a browser (or any client with a connection pool), a slot sends each request on its idle
keep-alive connection while that is fresh, so the stream usually goes out on the
connection its POST was answered on, and the next POST on the one the stream ended on:
one connection per user, not a second one idling beside each stream. A
fraction of generations drop their stream at a random event and resume after a short gap
with ``Last-Event-ID``. After the window, slots finish the stream they are on (the drain)
so that every request can be verified whole; events after the window are not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from scripts.benchlib import users
from scripts.benchlib.httpclient import Connection, ProtocolError
from scripts.benchlib.sse import event_at, parse_frames
from scripts.benchlib.verify import TERMINAL_TYPES

PROMPTS = (
    "a bakery in lyon",
    "landing page for a bike repair shop",
    "portfolio for a wedding photographer",
    "site for a vegan restaurant",
)
OUTPUT_TYPES = frozenset({"response_chunk", "content_block_start", "content_block_delta"})
NETWORK_ERRORS = (OSError, asyncio.IncompleteReadError, ProtocolError)
KEEPALIVE_S = 4.0  # uvicorn closes idle keep-alive connections after 5 s
MAX_STREAM_RETRIES = 5

Trace = list[tuple[float, str, bytes]]
"""``(at, type, data)`` of every event of one request, as received (for calibration)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPlan:
    """What to offer, for how long."""

    host: str
    port: int
    streams: int
    mode: str = "chat"
    warmup_s: float = 3.0
    duration_s: float = 15.0
    drain_s: float = 15.0
    ramp_s: float = 2.0
    disconnect_fraction: float = 0.1
    seed: int = 1


@dataclass(slots=True)
class Recorder:
    """Everything measured by the slots; counts only what falls in the window."""

    window_start: float
    window_end: float
    latencies_ms: list[float] = field(default_factory=list)
    first_event_ms: list[float] = field(default_factory=list)
    first_output_ms: list[float] = field(default_factory=list)
    post_ms: list[float] = field(default_factory=list)
    admitted_post_ms: list[float] = field(default_factory=list)
    resume_ms: list[float] = field(default_factory=list)
    post_statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    events: int = 0
    bytes: int = 0
    resumes: int = 0
    resumes_nothing_missed: int = 0
    generations: int = 0
    open_streams: int = 0
    """SSE connections the service has answered 200 and not yet ended, right now."""
    received: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    """The user who created each request."""
    traces: dict[str, Trace] | None = None

    def in_window(self, t: float) -> bool:
        return self.window_start <= t < self.window_end


class Slot:
    """One simulated user: one generation at a time, each followed to its end."""

    def __init__(self, plan: LoadPlan, rec: Recorder, rng: random.Random, user: str) -> None:
        self._plan = plan
        self._rec = rec
        self._rng = rng
        self._user = user
        self._auth = users.bearer(user)
        self._idle: Connection | None = None
        self._idle_since = 0.0

    async def run(self, start_delay: float) -> None:
        """Generations back to back until the window ends."""
        await asyncio.sleep(start_delay)
        rng, rec = self._rng, self._rec
        try:
            while time.time() < rec.window_end:
                posted = time.time()
                request_id = await self.create(rng.choice(PROMPTS))
                if request_id is None:
                    continue
                rec.generations += 1
                drop = rng.randint(3, 15) if rng.random() < self._plan.disconnect_fraction else 0
                await self.follow(request_id, posted, drop)
        finally:
            self.drop_idle()

    async def _connection(self) -> Connection:
        """The slot's idle keep-alive connection while it is fresh, else a new one."""
        conn, self._idle = self._idle, None
        if conn is not None:
            if time.perf_counter() - self._idle_since <= KEEPALIVE_S:
                return conn
            conn.abort()
        return await Connection.open(self._plan.host, self._plan.port)

    def _release(self, conn: Connection, clean: bool) -> None:
        """Keep ``conn`` for the next request if its response was read to the end
        (``clean``), else close it."""
        if clean and conn.reusable:
            self._idle, self._idle_since = conn, time.perf_counter()
        else:
            conn.abort()

    def drop_idle(self) -> None:
        """Close the idle connection, if any."""
        if self._idle is not None:
            self._idle.abort()
            self._idle = None

    async def create(self, prompt: str) -> str | None:
        """``POST /assistant/request``; the request ID, or None (after a pause) on failure."""
        rec = self._rec
        body = msgspec.json.encode({"prompt": prompt, "mode": self._plan.mode})
        sent = time.time()
        started = time.perf_counter()
        conn: Connection | None = None
        answered = False
        try:
            conn = await self._connection()
            head, data = await conn.request(
                "POST",
                "/assistant/request",
                [("Content-Type", "application/json"), self._auth],
                body,
            )
            answered = True
        except NETWORK_ERRORS as exc:
            rec.errors[f"POST {type(exc).__name__}"] += 1
        finally:
            if conn is not None:
                self._release(conn, answered)
        if not answered:
            await asyncio.sleep(0.2)
            return None
        post_ms = (time.perf_counter() - started) * 1000
        if rec.in_window(sent):
            rec.post_ms.append(post_ms)
            rec.post_statuses[head.status] += 1
            if head.status in (200, 201):
                rec.admitted_post_ms.append(post_ms)
        if head.status in (200, 201):
            request_id: str = msgspec.json.decode(data)["request_id"]
            rec.owners[request_id] = self._user
            return request_id
        if head.status != 429:
            rec.errors[f"POST {head.status}"] += 1
        await asyncio.sleep(min(float(head.headers.get("retry-after", "1") or 1), 1.0))
        return None

    async def follow(self, request_id: str, posted: float, drop_after: int) -> None:
        """Read the stream to its terminal event, dropping and resuming once if asked."""
        rec = self._rec
        received = rec.received.setdefault(request_id, [])
        trace = None if rec.traces is None else rec.traces.setdefault(request_id, [])
        output_due = True
        resuming = False
        failures = 0
        while failures <= MAX_STREAM_RETRIES:
            connected = time.time()
            headers = [("Accept", "text/event-stream"), self._auth]
            if received:
                headers.append(("Last-Event-ID", str(received[-1][0])))
            conn: Connection | None = None
            ended = dropped = is_open = clean = False
            try:
                conn = await self._connection()
                head = await conn.send("GET", f"/assistant/stream/{request_id}", headers)
                if head.status != 200:
                    if head.status != 204:
                        rec.errors[f"stream {head.status}"] += 1
                    await conn.body(head)
                    clean = True
                    return
                is_open = True
                rec.open_streams += 1
                buffer = b""
                first = True
                async with contextlib.aclosing(conn.chunks(head)) as chunks:
                    async for chunk in chunks:
                        now = time.time()
                        frames, buffer = parse_frames(buffer + chunk if buffer else chunk)
                        for frame in frames:
                            at = event_at(frame.data)
                            received.append((frame.id or 0, frame.event))
                            if trace is not None:
                                trace.append((at, frame.event, frame.data))
                            if rec.in_window(now):
                                rec.events += 1
                                rec.bytes += len(frame.data)
                                if at >= connected:
                                    rec.latencies_ms.append((now - at) * 1000)
                            if first:
                                first = False
                                self._first_frame(now, connected, at, resuming)
                            if output_due and frame.event in OUTPUT_TYPES:
                                output_due = False
                                if rec.in_window(posted):
                                    rec.first_output_ms.append((now - posted) * 1000)
                            if frame.event in TERMINAL_TYPES:
                                ended = True
                        if drop_after and not ended and len(received) >= drop_after:
                            dropped = True
                            break
                clean = not dropped  # the body was read to its end
            except NETWORK_ERRORS as exc:
                rec.errors[f"stream {type(exc).__name__}"] += 1
                failures += 1
            finally:
                if is_open:
                    rec.open_streams -= 1
                if conn is not None:
                    self._release(conn, clean)
            if ended:
                return
            if dropped:
                drop_after = 0
                await asyncio.sleep(self._rng.uniform(0.05, 0.3))
            else:
                await asyncio.sleep(0.2)  # closed early by the server (or failed): resume
            resuming = True

    def _first_frame(self, now: float, connected: float, at: float, resuming: bool) -> None:
        rec = self._rec
        if not resuming:
            if rec.in_window(connected):
                rec.first_event_ms.append((now - connected) * 1000)
            return
        rec.resumes += 1
        if at < connected:  # committed before we reconnected: a missed event
            if rec.in_window(connected):
                rec.resume_ms.append((now - connected) * 1000)
        else:
            rec.resumes_nothing_missed += 1


def recorder(plan: LoadPlan, started: float) -> Recorder:
    """A recorder for ``plan`` offered from ``started`` (wall clock)."""
    window_start = started + plan.warmup_s
    return Recorder(window_start, window_start + plan.duration_s)


async def run_load(plan: LoadPlan, started: float, rec: Recorder) -> int:
    """Offer ``plan`` from ``started`` (wall clock) into ``rec``; the slots cut short."""
    master = random.Random(plan.seed)
    ramp = min(plan.ramp_s, plan.warmup_s)
    slots = [
        Slot(plan, rec, random.Random(master.random()), users.user_of(n))
        for n in range(plan.streams)
    ]
    tasks = [
        asyncio.create_task(slot.run(max(0.0, started - time.time()) + n * ramp / plan.streams))
        for n, slot in enumerate(slots)
    ]
    deadline = rec.window_end + plan.drain_s
    done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.time()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if (exc := task.exception()) is not None:
            rec.errors[f"slot {type(exc).__name__}: {exc}"] += 1
    return len(pending)


CALIBRATION_ATTEMPTS = 20
"""How many times a warm-up generation is asked for, while the service answers 429, before
the run gives up (each 429 waits for its Retry-After, at most a second); any other
failure ends the warm-up at once."""


async def calibrate(host: str, port: int, mode: str) -> dict[str, Trace]:
    """One unhurried generation per prompt, concurrently; their events as received."""
    plan = LoadPlan(host=host, port=port, streams=len(PROMPTS), mode=mode)
    rec = Recorder(0.0, 0.0, traces={})

    async def one(prompt: str) -> tuple[str, Trace]:
        slot = Slot(plan, rec, random.Random(0), f"calibration-{PROMPTS.index(prompt)}")
        posted = time.time()
        try:
            for _ in range(CALIBRATION_ATTEMPTS):  # (a service just started may shed)
                errors = rec.errors.total()
                request_id = await slot.create(prompt)
                if request_id is not None or rec.errors.total() > errors:  # (a 429 is none)
                    break
            if request_id is None:
                why = dict(rec.errors) or f"429, {CALIBRATION_ATTEMPTS} times"
                raise RuntimeError(f"calibration request refused: {why}")
            await slot.follow(request_id, posted, 0)
        finally:
            slot.drop_idle()  # no next request comes
        assert rec.traces is not None
        return prompt, rec.traces[request_id]

    pairs = await asyncio.wait_for(asyncio.gather(*(one(p) for p in PROMPTS)), 120)
    return dict(pairs)


async def loop_lag(until: float, rec_lags: list[float], period_s: float = 0.02) -> None:
    """Record how late this process's event loop wakes up (a saturated client runs late)."""
    loop = asyncio.get_running_loop()
    while time.time() < until:
        due = loop.time() + period_s
        await asyncio.sleep(period_s)
        rec_lags.append(max(0.0, loop.time() - due) * 1000)
