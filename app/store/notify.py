"""Cross-node wake-ups on PostgreSQL: LISTEN for the commits other nodes NOTIFY.

The payload is small ("<request_id> <last_seq>"): the log stays the source of truth, and a
poked subscriber reads what it missed from the database. A lost notification (say, while
reconnecting) delays nothing past the subscribers' poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from app.store.engine import NOTIFY_CHANNEL
from app.store.hub import Hub

log = logging.getLogger(__name__)


class CommitListener:
    """Feeds NOTIFY payloads to the hub; reconnects if the connection drops."""

    def __init__(self, database_url: str, hub: Hub, *, retry_s: float = 1.0) -> None:
        self._dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._hub = hub
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        """Listen in the background."""
        self._task = asyncio.create_task(self._run(), name="commit-listener")

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        request_id, _, seq = payload.partition(" ")
        if seq.isdigit():
            self._hub.poke(request_id, int(seq))

    async def _run(self) -> None:
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError):
                log.warning("cannot LISTEN for commits yet; retrying", exc_info=True)
                await asyncio.sleep(self._retry_s)
                continue
            try:
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                self.connected.set()
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _c, done=closed: done.set())
                await closed.wait()
                log.warning("the LISTEN connection closed; reconnecting")
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await conn.close()
