"""Operator commands: serve, replay, audit, export, verify, rebuild, purge, token."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TextIO

import msgspec
import uvicorn

from app.api.app import create_app
from app.api.auth import USER_ID, mint_token
from app.api.services import services
from app.domain.events import (
    ContentBlockDelta,
    ContentBlockStart,
    Created,
    Error,
    ResponseChunk,
    StoredEvent,
    envelope_json,
    utcnow,
)
from app.domain.ids import is_request_id
from app.domain.replay import replay_offset
from app.logcontext import configure_logging
from app.settings import Settings, SettingsError
from app.store.audit import EventQuery, RequestQuery, all_events, audit_requests
from app.store.engine import Engines, create_engines
from app.store.integrity import check
from app.store.log import EventLog
from app.store.retention import purge_ended_before
from app.supervisor import WORKER_FD, supervise

BAR_WIDTH = 24


class _Server(uvicorn.Server):
    """uvicorn, plus: on SIGINT/SIGTERM end open SSE streams at once.

    uvicorn waits for open connections before it runs the lifespan shutdown, so a
    long-lived stream would hold the shutdown hostage; clients resume after restart.
    """

    def handle_exit(self, sig: int, frame: Any) -> None:
        app = self.config.loaded_app
        state = getattr(getattr(app, "app", app), "state", None)
        loop = asyncio.get_event_loop()
        if state is not None and "services" in state:
            loop.call_soon_threadsafe(services(state).begin_shutdown)
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> int:
    """Run the HTTP service until interrupted; with several workers, supervise them."""
    inherited = os.environ.get(WORKER_FD)
    if settings.workers > 1 and inherited is None:
        return supervise(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=10,
        # Our logfmt handler formats uvicorn's lines too; no access log (it would hold
        # the stream tokens in query strings, and one line per SSE request adds nothing).
        log_config=None,
        access_log=False,
    )
    tune_gc(settings.gc_thresholds)
    sockets = None if inherited is None else [socket.socket(fileno=int(inherited))]
    _Server(config).run(sockets=sockets)
    return 0


def tune_gc(thresholds: tuple[int, int, int]) -> None:
    """Freeze what start-up allocated and make the cycle collector run less often.

    A streaming server allocates a few objects per event and keeps thousands of tasks and
    connections alive; with Python's default thresholds (700, 10, 10) the collector walks
    them so often that it takes a quarter of the process's throughput and adds its pauses
    to every stream's latency (docs/benchmarks.md). Frozen objects are never walked again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


async def replay(
    settings: Settings, request_id: str, *, speed: float, from_seq: int, out: TextIO
) -> int:
    """Print a request's stored events at their original pacing, with a progress bar."""
    if not is_request_id(request_id):
        print(f"genstream: {request_id!r} is not a request ID (a UUIDv7)", file=sys.stderr)
        return 2
    engines = create_engines(settings.database_url)
    try:
        event_log = EventLog(engines)
        record = await event_log.get(request_id)
        if record is None:
            print(f"genstream: no request {request_id}", file=sys.stderr)
            return 1
        if from_seq > record.last_seq:
            print(
                f"genstream: --from {from_seq} is past the last event ({record.last_seq})",
                file=sys.stderr,
            )
            return 1
        events = await event_log.read(request_id, after=from_seq - 1)
        started = time.monotonic()
        first_at = events[0].at if events else None
        for event in events:
            assert first_at is not None
            delay = started + replay_offset(first_at, event.at, speed) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            print(progress_line(event, record.last_seq), file=out, flush=True)
        return 0
    finally:
        await engines.dispose()


def progress_line(event: StoredEvent, total: int) -> str:
    """``[#####.....]  12/40  type  summary`` for one replayed event."""
    done = round(BAR_WIDTH * event.seq / max(total, 1))
    bar = "#" * done + "." * (BAR_WIDTH - done)
    width = len(str(total))
    return f"[{bar}] {event.seq:>{width}}/{total}  {event.type:<19} {summarize(event)}"


def summarize(event: StoredEvent) -> str:
    """A short, single-line description of an event's payload."""
    match event.payload():
        case Created(mode=mode, prompt=prompt):
            summary = f"{mode}: {prompt!r}"
        case ResponseChunk(delta=delta) | ContentBlockDelta(delta=delta):
            summary = repr(delta)
        case ContentBlockStart(name=name, position=position, parent=parent):
            summary = f"{name} position={position}" + (
                f" in #{parent}" if parent is not None else ""
            )
        case Error(code=code, message=message):
            summary = f"{code}: {message}"
        case _:
            summary = event.data.decode()
    return summary if len(summary) <= 100 else summary[:97] + "..."


async def purge(settings: Settings, older_than_s: float, out: TextIO) -> int:
    """Delete requests that ended more than ``older_than_s`` seconds ago."""
    engines = create_engines(
        settings.database_url,
        sqlite_synchronous=settings.sqlite_synchronous,
        sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms,
    )
    try:
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        purged = await purge_ended_before(engines, cutoff)
    finally:
        await engines.dispose()
    print(f"purged {purged} requests that ended before {cutoff.isoformat()}", file=out)
    return 0


def token(settings: Settings, user: str, *, admin: bool, ttl_s: float, out: TextIO) -> int:
    """Print a bearer token for ``user``, signed with GENSTREAM_JWT_SECRET."""
    if not settings.jwt_secret:
        print(
            "genstream: GENSTREAM_JWT_SECRET is not set (local mode needs no token)",
            file=sys.stderr,
        )
        return 2
    if USER_ID.fullmatch(user) is None:
        print("genstream: --user must be 1 to 128 characters without spaces", file=sys.stderr)
        return 2
    print(
        mint_token(settings.jwt_secret, user, ttl=timedelta(seconds=ttl_s), admin=admin), file=out
    )
    return 0


def _engines(settings: Settings) -> Engines:
    return create_engines(
        settings.database_url,
        sqlite_synchronous=settings.sqlite_synchronous,
        sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms,
    )


def _progress(label: str) -> Callable[[int, int], None]:
    """Progress on stderr, so stdout stays clean for the command's output."""

    def show(done: int, total: int) -> None:
        print(f"\r{label}: {done}/{total} requests", end="", file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)

    return show


async def verify(settings: Settings, *, repair: bool, out: TextIO) -> int:
    """Check every invariant and the read model against the events (and repair drift)."""
    engines = _engines(settings)
    try:
        label = "rebuilding" if repair else "verifying"
        findings = await check(engines, repair=repair, progress=_progress(label))
    finally:
        await engines.dispose()
    for finding in findings:
        mark = "  (repaired)" if finding.repaired else ""
        print(f"{finding.request_id}  {finding.problem}{mark}", file=out)
    left = sum(not f.repaired for f in findings)
    if repair:
        print(f"{len(findings) - left} problems repaired, {left} left", file=out)
    else:
        print(f"{len(findings)} problems found", file=out)
    return 1 if left else 0


async def export(settings: Settings, query: EventQuery, out: TextIO) -> int:
    """Every matching event as NDJSON (with its global position and user)."""
    engines = _engines(settings)
    count = 0
    try:
        async for item in all_events(engines, query):
            print(
                msgspec.json.encode(
                    {"id": item.event.id, "user_id": item.user_id}
                    | msgspec.json.decode(envelope_json(item.event))
                ).decode(),
                file=out,
            )
            count += 1
            if count % 10_000 == 0:
                print(f"\rexported {count} events", end="", file=sys.stderr, flush=True)
    finally:
        await engines.dispose()
    print(f"exported {count} events", file=sys.stderr)
    return 0


async def audit(settings: Settings, query: RequestQuery, out: TextIO) -> int:
    """The requests read model as a readable table."""
    engines = _engines(settings)
    try:
        records = await audit_requests(engines, query)
    finally:
        await engines.dispose()
    print(
        f"{'request_id':<36}  {'user':<12} {'mode':<8} {'status':<9} {'events':>6}  created",
        file=out,
    )
    for r in records:
        created = r.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{r.request_id:<36}  {r.user_id[:12]:<12} {r.mode:<8} {r.status:<9} "
            f"{r.last_seq:>6}  {created}",
            file=out,
        )
    print(f"{len(records)} requests", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``genstream`` command."""
    parser = argparse.ArgumentParser(prog="genstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service (settings from GENSTREAM_*)")
    replay_cmd = sub.add_parser("replay", help="show a request's events at their original pace")
    replay_cmd.add_argument("request_id")
    replay_cmd.add_argument(
        "--speed", type=float, default=1.0, help="2 = twice as fast, 0 = at once"
    )
    replay_cmd.add_argument("--from", dest="from_seq", type=int, default=1, help="first seq")
    purge_cmd = sub.add_parser("purge", help="delete requests that ended long ago")
    purge_cmd.add_argument(
        "--older-than",
        type=float,
        default=None,
        help="seconds since the request ended (default: GENSTREAM_RETENTION_S)",
    )
    audit_cmd = sub.add_parser("audit", help="list requests as a table")
    audit_cmd.add_argument("--user")
    audit_cmd.add_argument("--status")
    audit_cmd.add_argument("--mode")
    audit_cmd.add_argument("--limit", type=int, default=50)
    export_cmd = sub.add_parser("export", help="write events as NDJSON to stdout")
    export_cmd.add_argument("--user")
    export_cmd.add_argument("--request-id")
    export_cmd.add_argument("--type")
    export_cmd.add_argument("--after-id", type=int, default=0)
    sub.add_parser("verify", help="check the log's invariants and the read model")
    rebuild_cmd = sub.add_parser("rebuild", help="recompute the requests read model from events")
    rebuild_cmd.add_argument(
        "--repair", action="store_true", help="write the fixes (stop the service first)"
    )
    token_cmd = sub.add_parser("token", help="mint a bearer token (needs GENSTREAM_JWT_SECRET)")
    token_cmd.add_argument("--user", required=True)
    token_cmd.add_argument("--admin", action="store_true", help="may audit every user")
    token_cmd.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"genstream: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "replay":
        if args.speed < 0 or args.from_seq < 1:
            parser.error("--speed must be >= 0 and --from >= 1")
        return asyncio.run(
            replay(
                settings, args.request_id, speed=args.speed, from_seq=args.from_seq, out=sys.stdout
            )
        )
    if args.command == "purge":
        older_than = settings.retention_s if args.older_than is None else args.older_than
        if older_than < 0 or (args.older_than is None and older_than == 0):
            parser.error("give --older-than SECONDS (or set GENSTREAM_RETENTION_S)")
        return asyncio.run(purge(settings, older_than, sys.stdout))
    if args.command == "audit":
        query = RequestQuery(
            user_id=args.user, status=args.status, mode=args.mode, limit=max(1, args.limit)
        )
        return asyncio.run(audit(settings, query, sys.stdout))
    if args.command == "export":
        events_query = EventQuery(
            user_id=args.user, request_id=args.request_id, type=args.type, after_id=args.after_id
        )
        return asyncio.run(export(settings, events_query, sys.stdout))
    if args.command in ("verify", "rebuild"):
        repair = args.command == "rebuild" and args.repair
        return asyncio.run(verify(settings, repair=repair, out=sys.stdout))
    if args.command == "token":
        if args.ttl <= 0:
            parser.error("--ttl must be positive")
        return token(settings, args.user, admin=args.admin, ttl_s=args.ttl, out=sys.stdout)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
