"""The benchmark's users: every slot is a user of its own, with a bearer token.

The service runs with a JWT secret, as a deployment does, so each slot's requests are
its own user's: the per-user limits keep realistic values, and admission counts each
user's requests of the last minute rather than everyone's as the one local user's (with
one user, a limit raised to 18,000 a minute made every group commit count that many
rows). The relay ignores the header.
"""

from __future__ import annotations

import functools
import secrets
import time

import jwt

SECRET = secrets.token_hex(32)
"""The service's ``GENSTREAM_JWT_SECRET`` for this invocation."""
MAX_ACTIVE_PER_USER = 4
"""A slot has one request at a time (plus a moment's overlap at its end)."""
RATE_PER_MINUTE = 600
"""About ten times what a slot creates at the fastest pace, so it never binds."""
TOKEN_TTL_S = 24 * 3600
ADMIN = "bench-admin"
"""Who reads ``/metrics`` (it covers every user, so only an admin may)."""


def user_of(slot: int) -> str:
    """The user a slot acts as."""
    return f"bench-{slot}"


@functools.cache
def bearer(user: str, *, admin: bool = False) -> tuple[str, str]:
    """The ``Authorization`` header of ``user`` (an admin for ``/metrics``)."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + TOKEN_TTL_S}
    if admin:
        claims["role"] = "admin"
    return ("Authorization", f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}")
