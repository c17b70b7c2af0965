"""The SSE response ends with the client, and leaves nothing for the cycle collector."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar.response.streaming import ASGIStreamingResponse
from litestar.testing import RequestFactory
from litestar.types import Message

from app.api.event_stream import EventStream, EventStreamBody

pytestmark = pytest.mark.anyio


class Connection:
    """What a dropped connection's handler keeps: its frames' locals point at one of these."""


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counting frees anything while the test runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Client:
    """The server's side of one connection: what was sent, and a disconnect on demand."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.got_some = asyncio.Event()
        self.gone = asyncio.Event()

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        self.got_some.set()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def body(
    kept: list[weakref.ref[Connection]], chunks: int, *, then_wait: bool
) -> AsyncIterator[bytes]:
    connection = Connection()  # a local of this frame while the stream runs
    kept.append(weakref.ref(connection))
    for n in range(chunks):
        yield b"chunk %d" % n
    if then_wait:
        await asyncio.Event().wait()  # the stream waits for events that never come


async def waiting(
    response_type: type[ASGIStreamingResponse] = EventStreamBody,
) -> tuple[Client, asyncio.Task[None], list[weakref.ref[Connection]]]:
    """A response being sent that has sent its first chunk and waits for more: its client,
    the task sending it, and a reference to what its stream holds."""
    client = Client()
    kept: list[weakref.ref[Connection]] = []
    response = response_type(iterator=body(kept, 1, then_wait=True), media_type="text/plain")
    sending = asyncio.create_task(response.send_body(client.send, client.receive))
    await client.got_some.wait()
    return client, sending, kept


async def dropped(
    response_type: type[ASGIStreamingResponse],
) -> tuple[list[Message], Connection | None, Client | None]:
    """Send a response that waits after its first chunk, drop the client, and return what
    was sent and what outlives the handler without the collector: the stream's own
    objects, and the server's side of the connection."""
    client, sending, kept = await waiting(response_type)
    client.gone.set()
    await sending
    sent, server_side = client.sent, weakref.ref(client)
    del sending, client
    return sent, kept[0](), server_side()


async def test_a_dropped_connection_is_freed_without_the_cycle_collector(
    no_collector: None,
) -> None:
    sent, left, server_side = await dropped(EventStreamBody)
    assert [m["body"] for m in sent] == [b"chunk 0"]  # no terminator: it was dropped
    assert left is None and server_side is None


async def test_litestar_s_own_streaming_response_leaves_it_to_the_collector(
    no_collector: None,
) -> None:
    # What EventStreamBody is for: anyio's task group keeps a reference cycle (anyio 4.16).
    # If a later anyio frees it too, this fails, and EventStream can go.
    _, left, server_side = await dropped(ASGIStreamingResponse)
    assert left is not None and server_side is not None
    del left, server_side
    gc.collect()


async def test_a_stream_that_ends_sends_its_chunks_and_the_end_of_the_body() -> None:
    client = Client()
    kept: list[weakref.ref[Connection]] = []
    response = EventStreamBody(iterator=body(kept, 3, then_wait=False), media_type="text/plain")
    await asyncio.wait_for(response.send_body(client.send, client.receive), 10)
    assert [(m["body"], m["more_body"]) for m in client.sent] == [
        (b"chunk 0", True),
        (b"chunk 1", True),
        (b"chunk 2", True),
        (b"", False),
    ]


async def test_a_stream_ends_though_the_server_answers_disconnect_once_it_is_complete() -> None:
    # uvicorn's receive() returns http.disconnect once the response is complete.
    client = Client()
    kept: list[weakref.ref[Connection]] = []
    response = EventStreamBody(iterator=body(kept, 2, then_wait=False), media_type="text/plain")

    async def send(message: Message) -> None:
        await client.send(message)
        if not message.get("more_body", True):
            client.gone.set()

    await asyncio.wait_for(response.send_body(send, client.receive), 10)
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def _children() -> list[asyncio.Task[Any]]:
    """The tasks a response started: one sending its body, one watching for the disconnect."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "")
        in {"ASGIStreamingResponse._stream", "_disconnected"}
    ]


async def test_the_server_cancelling_the_response_cancels_the_stream_and_leaves_no_task() -> None:
    client, sending, _ = await waiting()
    children = _children()
    # The body runs in the request's task; only the watch for the disconnect is a task.
    assert [task.get_coro().__qualname__ for task in children] == ["_disconnected"]
    assert not any(task.done() for task in children)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert all(task.cancelled() for task in children)
    assert len(client.sent) == 1  # nothing more after the cancel: no end of the body


def _watch() -> asyncio.Task[Any]:
    """The task watching for the disconnect."""
    (watch,) = _children()
    return watch


async def test_a_disconnect_and_a_server_cancel_together_still_cancel_the_request() -> None:
    # The disconnect's cancel is taken back; the server's, which comes right after it, is not.
    client, sending, _ = await waiting()
    _watch().add_done_callback(lambda _: sending.cancel())  # runs after the interrupt
    client.gone.set()
    with pytest.raises(asyncio.CancelledError):
        await sending


async def test_a_disconnect_once_the_body_has_ended_cancels_nothing() -> None:
    # uvicorn's receive() answers http.disconnect once the response is complete: the watch
    # can end in the same turn as the body, and its interrupt must not reach the server.
    client = Client()

    async def ending() -> AsyncIterator[bytes]:
        yield b"last"
        client.gone.set()
        await asyncio.sleep(0)  # the watch sees the disconnect; its callback comes next

    response = EventStreamBody(iterator=ending(), media_type="text/plain")

    async def handler() -> int:
        await response.send_body(client.send, client.receive)
        await asyncio.sleep(0)  # a cancel sent after the body would land here
        await asyncio.sleep(0)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert await asyncio.wait_for(handler(), 10) == 0
    assert client.sent[-1]["more_body"] is False


async def test_a_dropped_stream_ends_the_body_and_the_request_task_goes_on() -> None:
    # The request's task is the server's: after a disconnect it carries on, uncancelled.
    client = Client()
    kept: list[weakref.ref[Connection]] = []
    response = EventStreamBody(iterator=body(kept, 1, then_wait=True), media_type="text/plain")

    async def handler() -> str:
        await response.send_body(client.send, client.receive)
        await asyncio.sleep(0)  # a cancel left pending would land here
        task = asyncio.current_task()
        assert task is not None
        return f"after the body, cancelling={task.cancelling()}"

    sending = asyncio.create_task(handler())
    await client.got_some.wait()
    client.gone.set()
    assert await asyncio.wait_for(sending, 10) == "after the body, cancelling=0"


class Broken:
    """The server's side of a connection whose receive() fails."""

    async def receive(self) -> Message:
        raise OSError("the connection broke")


async def test_a_failing_receive_is_raised_to_the_server_and_frees_the_connection(
    no_collector: None,
) -> None:
    broken = Broken()
    kept: list[weakref.ref[Connection]] = []
    response = EventStreamBody(iterator=body(kept, 1, then_wait=True), media_type="text/plain")
    sending = asyncio.create_task(response.send_body(Client().send, broken.receive))
    with pytest.raises(OSError, match="the connection broke"):
        await sending
    server_side = weakref.ref(broken)
    del broken, response, sending
    for _ in range(3):
        await asyncio.sleep(0)  # the loop lets go of the finished tasks' last callbacks
    assert kept[0]() is None and server_side() is None


async def test_an_error_in_the_stream_is_raised_to_the_server() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"one"
        raise ValueError("the stream broke")

    client = Client()
    response = EventStreamBody(iterator=failing(), media_type="text/plain")
    with pytest.raises(ValueError, match="the stream broke"):
        await asyncio.wait_for(response.send_body(client.send, client.receive), 10)


def test_event_stream_is_sent_by_event_stream_body() -> None:
    async def empty() -> AsyncIterator[bytes]:
        yield b""

    request: Any = RequestFactory().get("/")
    response = EventStream(empty(), media_type="text/event-stream").to_asgi_response(None, request)
    assert type(response) is EventStreamBody
