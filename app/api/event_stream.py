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

    The body runs in the server's task for the request, and one more task waits for the
    disconnect and cancels it: a task, its context and an ``asyncio.wait`` less per open
    stream than running the body in a task of its own (docs/benchmarks.md, "One task
    less per stream").
    """

    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        handler = asyncio.current_task()
        assert handler is not None  # (the service runs on asyncio: uvloop)
        interrupt = _Interrupt(handler)
        watch = asyncio.get_running_loop().create_task(_disconnected(receive))
        watch.add_done_callback(interrupt)
        try:
            await self._stream(send)
        except asyncio.CancelledError:
            # The body stops where it waits. Only a cancel of the interrupt's own is
            # taken back; the server's (shutdown) goes on. (The body must not swallow a
            # CancelledError, or the interrupt's would land in the server's code.)
            if interrupt.armed or handler.uncancel() > 0:
                raise
        finally:
            interrupt.armed = False
            watch.remove_done_callback(interrupt)
            watch.cancel()
        if watch.done() and not watch.cancelled() and (error := watch.exception()) is not None:
            try:
                raise error  # receive() failed: the server hears of it, as from the body
            finally:
                del error  # the traceback holds this frame: no cycle through it


class _Interrupt:
    """The disconnect watch's done callback: cancels the request's task while its body is
    being sent (``armed``), once."""

    __slots__ = ("armed", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.armed = True

    def __call__(self, _watch: asyncio.Task[None]) -> None:
        if self.armed:
            self.armed = False
            self.task.cancel()


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (or the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass
