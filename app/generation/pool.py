"""A bounded pool of runner tasks fed by the durable work queue."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from app.domain.events import Error
from app.generation.runner import Runner
from app.store.log import EventLog, StreamClosed
from app.store.queue import WorkQueue

log = logging.getLogger(__name__)


class RunnerPool:
    """Claims queued requests and runs at most ``size`` of them at a time."""

    def __init__(
        self,
        runner: Runner,
        queue: WorkQueue,
        event_log: EventLog,
        *,
        size: int,
        poll_interval_s: float = 1.0,
        lease_renew_s: float = 10.0,
        claim_batch: int = 64,
    ) -> None:
        self._runner = runner
        self._queue = queue
        self._log = event_log
        self._poll = poll_interval_s
        self._renew = lease_renew_s
        self._work = asyncio.Event()
        self._size = size
        self._claim_batch = claim_batch
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancel_reasons: dict[str, str] = {}

    async def start(self) -> None:
        """Recover what a dead process left behind, then start claiming work."""
        await self.recover()
        self._tasks = [
            asyncio.create_task(self._dispatch(), name="dispatcher"),
            asyncio.create_task(self._heartbeat(), name="lease-heartbeat"),
        ]

    async def recover(self, *, at_startup: bool = True) -> list[str]:
        """End requests left ``running`` as interrupted; put unstarted claims back."""
        interrupted = await self._queue.orphaned_running(at_startup=at_startup)
        for request_id in interrupted:
            with contextlib.suppress(StreamClosed):
                await self._log.append(
                    request_id,
                    [
                        Error(
                            code="interrupted",
                            message="the service stopped during the generation; "
                            "regenerate to retry",
                            retryable=True,
                        )
                    ],
                )
        released = await self._queue.release_unstarted(at_startup=at_startup)
        if released:
            self.notify()
        if interrupted or released:
            log.info(
                "recovered %d interrupted and %d unstarted requests", len(interrupted), released
            )
        return interrupted

    def notify(self) -> None:
        """New work was queued: wake the dispatcher now rather than at the next poll."""
        self._work.set()

    async def cancel(self, request_id: str, reason: str) -> None:
        """Stop a request if this process runs it, and wait until its runner has let go.

        A runner that was already generating ends the request with ``cancelled{reason}``;
        one cancelled before it started writes nothing, so callers end the stream too.
        """
        task = self._running.get(request_id)
        if task is None:
            return
        self._cancel_reasons[request_id] = reason
        task.cancel()
        await asyncio.wait({task})

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` has been called."""
        return self._stopping

    @property
    def active(self) -> int:
        """Generations running in this process."""
        return len(self._running)

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; give running generations ``grace_s`` to finish, then interrupt them."""
        self._stopping = True
        self._work.set()
        self._slot_freed.set()
        running = set(self._running.values())
        if running and grace_s > 0:
            await asyncio.wait(running, timeout=grace_s)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _dispatch(self) -> None:
        """One claimer for the whole pool. It claims only for free slots, and as many as
        are free in one transaction: an idle pool costs one claim per poll interval (on
        SQLite, one read that finds nothing to claim), and a busy one a claim per batch of
        requests rather than per request."""
        while not self._stopping:
            free = self._size - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._work.clear()
            wanted = min(free, self._claim_batch)
            try:
                claims = await self._queue.claim(wanted)
            except Exception:
                log.exception("claiming queued work failed; retrying")
                claims = []
            if self.stopping:
                return  # (a claim made while stopping is released at the next start)
            for claim in claims:
                task = asyncio.create_task(
                    self._runner.run(claim, cancel_reason=self._cancel_reasons),
                    name=f"run-{claim.request_id}",
                )
                self._running[claim.request_id] = task
                # A done callback, not a finally: it also runs for a task cancelled before
                # it ever started.
                task.add_done_callback(functools.partial(self._finished, claim.request_id))
            if not claims:
                # The queue is empty (for this node): wait for new work or the next poll.
                # (A short batch claims again at once: on PostgreSQL, rows other nodes
                # held locked were skipped, not missing.)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await self._work.wait()

    def _finished(self, request_id: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(request_id, None)
        self._cancel_reasons.pop(request_id, None)
        self._slot_freed.set()

    async def _heartbeat(self) -> None:
        """Renew this node's leases; end what dead nodes left behind once their leases expire."""
        while True:
            await asyncio.sleep(self._renew)
            try:
                await self._queue.renew(list(self._running))
                await self.recover(at_startup=False)
            except Exception:
                log.exception("renewing leases failed")
