"""Who is calling: bearer JWTs, request-scoped stream tokens, and local mode.

- With ``GENSTREAM_JWT_SECRET`` set, every route but health, readiness and the schema
  needs ``Authorization: Bearer <JWT>`` (HS256, ``sub`` = user, ``role: admin`` may audit
  everyone).
- Browsers' EventSource cannot send headers, so the ``stream_url`` of a new request
  carries ``?token=`` with a short-lived JWT scoped to that one request: it opens that
  request's stream or replay and nothing else.
- Without a secret the service runs in local mode: every caller is the one local user.

Tokens are never logged: nothing here, nor the error handlers, writes a query string.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp

ALGORITHM = "HS256"
CLOCK_SKEW = timedelta(seconds=30)
LOCAL_USER = "local"
STREAM_SCOPE = "stream"
USER_ID = re.compile(r"[^\s]{1,128}")
# Routes open to everyone (regular expressions over the path).
PUBLIC_PATHS = ["^/health$", "^/ready$", "^/schema", "^/$", "^/static/"]
# The only routes a stream token opens, for the request named in the token.
_STREAM_ROUTE = re.compile(r"^/assistant/(?:stream|replay)/(?P<rid>[^/]+)$")


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    user_id: str
    admin: bool = False
    stream_of: str | None = None
    """Set for a stream token: the one request whose stream it opens."""


def mint_token(
    secret: str,
    user_id: str,
    *,
    ttl: timedelta,
    admin: bool = False,
    stream_of: str | None = None,
) -> str:
    """A signed HS256 token for ``user_id`` (scoped to one request's stream if asked).

    Claims are flat (``sub``, ``exp``, ``iat``, ``role``, ``scope``, ``rid``), as any JWT
    library writes them; Litestar's ``Token.encode`` would nest custom ones under ``extras``.
    """
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl}
    if admin:
        claims["role"] = "admin"
    if stream_of is not None:
        claims.update(scope=STREAM_SCOPE, rid=stream_of)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def read_token(secret: str, raw: str, *, now: float | None = None) -> Principal:
    """The principal a token proves; 401 with the reason when it proves nothing.

    A client sends the same token with each of its requests, so a token's signature and
    claims are checked once and remembered (the last ``TOKENS_REMEMBERED`` tokens); its
    expiry is checked on every use, against ``now`` (default: the clock). The first
    check, PyJWT's, always reads the clock, so ``now`` only moves the later ones.
    """
    principal, expires = _verified(secret, raw)
    now = time.time() if now is None else now
    # User tokens get CLOCK_SKEW of leeway, as in PyJWT; stream tokens, minted on this
    # service's clock, get none.
    leeway = 0.0 if principal.stream_of is not None else CLOCK_SKEW.total_seconds()
    if expires <= now - leeway:
        raise NotAuthorizedException("the token has expired; mint a new one")
    return principal


TOKENS_REMEMBERED = 4096


@functools.lru_cache(maxsize=TOKENS_REMEMBERED)
def _verified(secret: str, raw: str) -> tuple[Principal, int]:
    """The principal a token proves and when it expires; 401 when it proves nothing.

    Decoded with PyJWT directly: Litestar's ``Token.decode`` also demands ``iat`` and
    refuses any clock skew, and tokens from other issuers often lack ``iat``. A failure is
    raised, so it is not remembered: a bad token is checked again each time it is sent.
    """
    try:
        claims = jwt.decode(
            raw,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "sub"]},
            leeway=CLOCK_SKEW,
        )
    except jwt.ExpiredSignatureError:
        raise NotAuthorizedException("the token has expired; mint a new one") from None
    except jwt.InvalidSignatureError:
        raise NotAuthorizedException("the token's signature does not verify") from None
    except jwt.MissingRequiredClaimError as exc:
        raise NotAuthorizedException(f"the token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError:
        raise NotAuthorizedException("the token is malformed or not HS256-signed") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or USER_ID.fullmatch(sub) is None:
        raise NotAuthorizedException("the token's sub must be a user ID of 1 to 128 characters")
    stream_of = None
    if claims.get("scope") == STREAM_SCOPE:
        rid = claims.get("rid")
        if not isinstance(rid, str):
            raise NotAuthorizedException("the stream token names no request")
        stream_of = rid
    principal = Principal(user_id=sub, admin=claims.get("role") == "admin", stream_of=stream_of)
    return principal, int(claims["exp"])  # (PyJWT compares it as an int too)


class AuthMiddleware(AbstractAuthenticationMiddleware):
    """Sets ``request.user`` to the caller's ``Principal`` or answers 401."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        super().__init__(app, exclude=PUBLIC_PATHS)
        self._secret = secret

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        if not self._secret:
            return AuthenticationResult(user=Principal(LOCAL_USER, admin=True), auth=None)
        header = connection.headers.get("authorization")
        if header is not None:
            scheme, _, raw = header.partition(" ")
            if scheme.lower() != "bearer" or not raw.strip():
                raise NotAuthorizedException("use Authorization: Bearer <token>")
            principal = read_token(self._secret, raw.strip())
        elif (query_token := connection.query_params.get("token")) is not None:
            principal = read_token(self._secret, str(query_token))
            if principal.stream_of is None:
                raise NotAuthorizedException(
                    "only stream tokens go in ?token=; send others as a Bearer header"
                )
        else:
            raise NotAuthorizedException(
                "this route needs Authorization: Bearer <token> (see `genstream token`)"
            )
        if principal.stream_of is not None:
            route = _STREAM_ROUTE.match(connection.url.path)
            if route is None or route.group("rid") != principal.stream_of:
                raise NotAuthorizedException(
                    "a stream token only opens the stream of the request it was issued for"
                )
        return AuthenticationResult(user=principal, auth=None)
