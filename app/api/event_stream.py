"""The SSE response: Litestar's ``Stream``, with the client's disconnect watched by a plain
asyncio task instead of an anyio task group.

Litestar streams a body in an anyio task group and cancels it when the client goes away.
anyio's task group keeps the cancelled task's ``CancelledError`` in a local of the frame
that handles the task's end, and the error's traceback holds that frame: a reference
cycle, through the stream's frames, that keeps the whole dropped connection (uvicorn's
transport and request cycle, Litestar's request and response, the stream's subscription)
until the cycle collector runs, which under load with the service's thresholds can be
minutes. Here the body and the watch for the disconnect are two asyncio tasks, and
whichever ends first cancels the other; nothing keeps a cancelled task's error but the
task, so a dropped connection is freed as soon as its handler returns.
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
    """Streams the body until it ends or the client disconnects, with no task group."""

    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        loop = asyncio.get_running_loop()  # (the service runs on asyncio: uvloop)
        tasks = (loop.create_task(self._stream(send)), loop.create_task(_disconnected(receive)))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            # Every error is retrieved, also while this task is being cancelled; the body's
            # is raised first. (Cancelled once, unlike anyio's repeated cancel: the body must
            # not swallow a CancelledError, or this waits for it to end by itself.)
            errors = [task.exception() for task in tasks if not task.cancelled()]
            del tasks
        error = next((e for e in errors if e is not None), None)
        del errors
        if error is not None:
            try:
                raise error
            finally:
                del error  # the traceback holds this frame: no cycle through it


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (or the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass
