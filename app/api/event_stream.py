"""The SSE response: Litestar's ``Stream``, with the client's disconnect watched by a plain
asyncio task instead of an anyio task group.

Litestar streams a body in an anyio task group and cancels it when the client goes away.
anyio's task group keeps the cancelled task's ``CancelledError`` in a local of the frame
that handles the task's end, and the error's traceback holds that frame: a reference
cycle, through the stream's frames, that keeps the whole dropped connection (uvicorn's
transport and request cycle, Litestar's request and response, the stream's subscription)
until the cycle collector runs, which under load with the service's thresholds can be
minutes. Here the body runs in the request's own task and a plain asyncio task watches
for the disconnect, cancelling the body when it comes; no cancelled task's error is kept
in a frame, so a dropped connection is freed as soon as its handler returns.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send


class EventStream(Stream):
    """``Stream``, sent by ``EventStreamBody``."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        if type(response) is ASGIStreamingResponse:
            response.__class__ = EventStreamBody  # same slots: only ``send_body`` differs
        return response


class EventStreamBody(ASGIStreamingResponse):
    """Streams the body until it ends or the client disconnects, with no task group.

    The body runs in the server's task for the request; one more task waits for the
    disconnect and cancels it (docs/benchmarks.md, "One task less per stream").
    """

    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        handler = asyncio.current_task()
        assert handler is not None  # (the service runs on asyncio: uvloop)
        cancels = handler.cancelling()
        interrupt = _Interrupt(handler)
        watch = asyncio.get_running_loop().create_task(_disconnected(receive))
        watch.add_done_callback(interrupt)
        try:
            await self._stream(send)
        except asyncio.CancelledError:
            # Only the interrupt's cancel ends the body quietly; the server's (shutdown)
            # goes on.
            if not interrupt.fired or handler.cancelling() > cancels + 1:
                raise
        finally:
            interrupt.armed = False
            if interrupt.fired:
                handler.uncancel()  # the interrupt's, however the body took it
            watch.cancel()
            # Every error is retrieved; a failed receive() is raised once the body stops.
            error = None if not watch.done() or watch.cancelled() else watch.exception()
            # An error raised from here holds this frame in its traceback, and a task may
            # keep its error: no local may lead back to a task.
            del watch, interrupt, handler
        if error is not None:
            try:
                raise error
            finally:
                del error  # the traceback holds this frame: no cycle through it


class _Interrupt:
    """The disconnect watch's done callback: while the body is being sent (``armed``),
    cancels the request's task, once (``fired``)."""

    __slots__ = ("armed", "fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.armed = True
        self.fired = False

    def __call__(self, _watch: asyncio.Task[None]) -> None:
        if self.armed:
            self.armed = False
            self.fired = True
            self.task.cancel()


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (or the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass
