"""The SSE wire format, byte for byte."""

from __future__ import annotations

import pytest

from app.api import sse


def test_event_frame_bytes() -> None:
    assert sse.event_frame(7, "stage", b'{"seq":7}') == (
        b'id: 7\nevent: stage\ndata: {"seq":7}\n\n'
    )


def test_retry_and_ping_frames() -> None:
    assert sse.retry_frame(2000) == b"retry: 2000\n\n"
    assert sse.PING == b": ping\n\n"


def test_multiline_data_is_refused() -> None:
    with pytest.raises(ValueError, match="single-line"):
        sse.event_frame(1, "x", b"{\n}")


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, None), ("", None), ("  ", None), ("0", 0), ("42", 42), (" 7 ", 7)]
)
def test_last_event_id_parsing(raw: str | None, expected: int | None) -> None:
    assert sse.parse_last_event_id(raw) == expected


@pytest.mark.parametrize("raw", ["-1", "abc", "1.0", "0x10", "٣", "9" * 19])
def test_malformed_last_event_id(raw: str) -> None:
    with pytest.raises(ValueError, match="non-negative integer"):
        sse.parse_last_event_id(raw)
