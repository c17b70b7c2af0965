"""The log writer's own protocol (``store/writer.py``): rejections cross the process
boundary whole, frames are answered once each and in order however they arrive, a failed
transaction is an answer rather than the writer's end, and a writer told to stop still
serves the workers connected to it. (The store contract suite runs the whole log through
a writer process; the supervisor's side is in tests/integration/test_workers.py.)"""

from __future__ import annotations

import os
import pickle
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from app.domain import events as ev
from app.store.engine import create_engines
from app.store.log import (
    ActiveLimitReached,
    Appending,
    AppendRejected,
    DuplicateRequest,
    ElementBusy,
    NewRequest,
    RateLimited,
    StreamClosed,
    UnknownRequest,
)
from app.store.writer import (
    CONFLICT,
    FAILED,
    FRAME,
    OK,
    PING,
    RECV_BYTES,
    REFUSED,
    RemoteWriter,
    WriterFailed,
    WriterUnavailable,
    frame,
    serve_writes,
)

REJECTIONS: list[AppendRejected] = [
    AppendRejected("refused"),
    StreamClosed("closed"),
    UnknownRequest("r"),
    DuplicateRequest("r"),
    ActiveLimitReached("ana", 4),
    RateLimited(30, 12),
    ElementBusy("r-1"),
]


@pytest.mark.parametrize("rejection", REJECTIONS, ids=lambda r: type(r).__name__)
def test_every_rejection_crosses_the_process_boundary(rejection: AppendRejected) -> None:
    copy = pickle.loads(pickle.dumps(rejection))
    assert type(copy) is type(rejection) and str(copy) == str(rejection)
    assert vars(copy) == vars(rejection)


class Writer:
    """``serve_writes`` on a thread, stopped through its pipe as the supervisor does."""

    def __init__(self, url: str, path: Path) -> None:
        self.path = path
        self.engines = create_engines(url, sqlite_workers=True)
        self._stop_read, self._stop_write = os.pipe()
        self.thread = threading.Thread(
            target=serve_writes, args=(self.engines, path, self._stop_read), daemon=True
        )
        self.thread.start()
        self._connections: list[socket.socket] = []

    def connect(self) -> socket.socket:
        while True:  # (the socket's name appears once it accepts)
            assert self.thread.is_alive(), "the writer ended while starting"
            if self.path.exists():
                break
            self.thread.join(0.01)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(self.path))
        conn.settimeout(30)
        self._connections.append(conn)
        return conn

    def tell_to_stop(self) -> None:
        os.close(self._stop_write)

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
        if self.thread.is_alive():
            self.tell_to_stop()
        self.thread.join(30)
        os.close(self._stop_read)


@pytest.fixture
def writer(migrated_sqlite_url: str, tmp_path: Path) -> Iterator[Writer]:
    w = Writer(migrated_sqlite_url, tmp_path / "log.sock")
    yield w
    w.close()


def create_batch(rid: str) -> list[tuple[object, ...]]:
    new = NewRequest(request_id=rid, user_id="u", mode="chat")
    return [(rid, [ev.Created(mode="chat", prompt="p"), ev.Status(status="queued")], new)]


def answer(conn: socket.socket) -> tuple[str, object]:
    (n,) = FRAME.unpack(_exactly(conn, FRAME.size))
    kind, value = pickle.loads(_exactly(conn, n))
    return kind, value


def _exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        assert chunk, "the writer closed the connection"
        data += chunk
    return data


def rid_of(n: int) -> str:
    return f"0190{n:04x}-0000-7000-8000-000000000000"


def test_frames_are_answered_once_each_in_order_however_they_arrive(writer: Writer) -> None:
    conn = writer.connect()
    frames = [frame(create_batch(rid_of(n))) for n in range(3)]
    conn.sendall(frames[0] + frames[1] + frames[2][:7])  # two whole, and a third begun
    conn.sendall(frames[2][7:])
    for n in range(3):
        kind, (outcomes, spans, written, ids, _at) = answer(conn)  # type: ignore[misc]
        assert kind == OK and outcomes == [[]] and spans == [(0, 2)]
        assert [(rid, seq) for rid, seq, _, _ in written] == [(rid_of(n), 1), (rid_of(n), 2)]
        assert len(ids) == 2
    conn.sendall(frame(create_batch(rid_of(0))))
    assert answer(conn)[0] == CONFLICT, "a duplicate request is the worker's to sort out"


def test_a_batch_larger_than_one_read_arrives_whole(writer: Writer) -> None:
    conn = writer.connect()
    rid = rid_of(7)
    conn.sendall(frame(create_batch(rid)))
    assert answer(conn)[0] == OK
    text = "x" * (3 * RECV_BYTES)
    big = frame([(rid, [ev.ResponseChunk(delta=text)], None)])
    assert len(big) > 3 * RECV_BYTES
    conn.sendall(big)
    kind, (outcomes, _spans, written, _ids, _at) = answer(conn)  # type: ignore[misc]
    assert kind == OK and outcomes == [[]]
    ((_, seq, type_, data),) = written
    assert (seq, type_) == (3, "response_chunk") and text.encode() in data


def test_a_ping_is_answered_in_turn_without_a_transaction(writer: Writer) -> None:
    conn = writer.connect()
    conn.sendall(frame(create_batch(rid_of(1))) + frame(PING) + frame(create_batch(rid_of(2))))
    assert [answer(conn)[0] for _ in range(3)] == [OK, OK, OK]
    conn.sendall(frame(PING))
    assert answer(conn) == (OK, None)


def test_a_failed_transaction_is_an_answer_and_the_writer_goes_on(tmp_path: Path) -> None:
    bare = Writer(f"sqlite+aiosqlite:///{tmp_path / 'not-migrated.db'}", tmp_path / "b.sock")
    try:
        conn = bare.connect()
        for _ in range(2):
            conn.sendall(frame(create_batch(rid_of(1))))
            kind, detail = answer(conn)
            assert kind == REFUSED and "no such table" in str(detail)
    finally:
        bare.close()


def test_a_batch_that_fails_otherwise_is_an_answer_and_the_writer_goes_on(
    writer: Writer,
) -> None:
    conn = writer.connect()
    new = NewRequest(request_id=rid_of(1), user_id="u", mode="chat")
    for bad in ([("not", "a", "batch", "item")], [(rid_of(1), [42], new)]):
        conn.sendall(frame(bad))
        kind, _ = answer(conn)
        assert kind == FAILED, "what is not the database's refusal fails as such"
    conn.sendall(frame(create_batch(rid_of(2))))
    assert answer(conn)[0] == OK


def test_a_writer_told_to_stop_serves_its_workers_until_they_leave(writer: Writer) -> None:
    conn = writer.connect()
    writer.tell_to_stop()
    conn.sendall(frame(create_batch(rid_of(1))))
    assert answer(conn)[0] == OK, "a worker's last commits still go through"
    conn.close()
    writer.thread.join(30)
    assert not writer.thread.is_alive() and not writer.path.exists()


@pytest.mark.anyio
async def test_a_worker_waits_for_its_writer_then_gives_up(tmp_path: Path) -> None:
    remote = RemoteWriter(tmp_path / "nobody.sock", connect_timeout_s=0.2)
    with pytest.raises(WriterUnavailable, match="no log writer"):
        await remote.write([])


@pytest.mark.anyio
async def test_a_refused_transaction_raises_in_the_worker_as_the_database_s(
    tmp_path: Path,
) -> None:
    bare = Writer(f"sqlite+aiosqlite:///{tmp_path / 'not-migrated.db'}", tmp_path / "b.sock")
    try:
        bare.connect()  # (waits until it accepts)
        remote = RemoteWriter(bare.path)
        (rid, payloads, new) = create_batch(rid_of(1))[0]
        with pytest.raises(OperationalError, match="no such table"):
            await remote.write([Appending(rid, payloads, new)])  # type: ignore[arg-type]
        await remote.close()
    finally:
        bare.close()


@pytest.mark.anyio
async def test_a_failed_batch_raises_in_the_worker(writer: Writer) -> None:
    writer.connect()  # (waits until it accepts)
    remote = RemoteWriter(writer.path)
    new = NewRequest(request_id=rid_of(1), user_id="u", mode="chat")
    with pytest.raises(WriterFailed):
        await remote.write([Appending(rid_of(1), [42], new)])  # type: ignore[list-item]
    await remote.close()
