"""Request IDs: UUIDv7 (RFC 9562), unique and ordered by creation time."""

from __future__ import annotations

import re
import uuid

_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def uuid7(unix_ms: int, random_bytes: bytes) -> str:
    """A UUIDv7 string from a millisecond timestamp and 10 random bytes."""
    if len(random_bytes) < 10:
        raise ValueError("uuid7 needs 10 random bytes")
    rand = int.from_bytes(random_bytes[:10], "big")
    rand_a = (rand >> 68) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (unix_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def is_request_id(value: str) -> bool:
    """Whether ``value`` is a canonical lower-case UUIDv7."""
    return _UUID7.fullmatch(value) is not None
