"""UUIDv7 request IDs."""

from __future__ import annotations

import uuid

from app.domain.ids import is_request_id, uuid7


def test_uuid7_layout() -> None:
    value = uuid7(1_795_000_000_123, bytes(range(10)))
    parsed = uuid.UUID(value)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert int(value.replace("-", "")[:12], 16) == 1_795_000_000_123
    assert is_request_id(value)


def test_ids_sort_by_time() -> None:
    assert uuid7(1000, b"\xff" * 10) < uuid7(1001, b"\x00" * 10)


def test_other_strings_are_not_request_ids() -> None:
    assert not is_request_id(str(uuid.uuid4()))
    assert not is_request_id(uuid7(5, b"\xab" * 10).upper())
    assert not is_request_id("../../etc/passwd")
    assert not is_request_id("")
