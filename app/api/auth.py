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

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from litestar.connection import ASGIConnection
from litestar.exceptions import ImproperlyConfiguredException, NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.security.jwt import Token
from litestar.types import ASGIApp

ALGORITHM = "HS256"
LOCAL_USER = "local"
STREAM_SCOPE = "stream"
USER_ID = re.compile(r"[^\s]{1,128}")
# Routes open to everyone (regular expressions over the path).
PUBLIC_PATHS = ["^/health$", "^/ready$", "^/schema"]
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


def read_token(secret: str, raw: str) -> Principal:
    """The principal a token proves; 401 with the reason when it proves nothing."""
    try:
        token = Token.decode(raw, secret, ALGORITHM, require_claims=["exp", "sub"])
    except NotAuthorizedException as exc:
        cause = exc.__cause__
        if isinstance(cause, jwt.ExpiredSignatureError):
            raise NotAuthorizedException("the token has expired; mint a new one") from None
        if isinstance(cause, jwt.InvalidSignatureError):
            raise NotAuthorizedException("the token's signature does not verify") from None
        raise NotAuthorizedException("the token is malformed or not HS256-signed") from None
    except ImproperlyConfiguredException:
        raise NotAuthorizedException("the token's claims are invalid") from None
    if not isinstance(token.sub, str) or USER_ID.fullmatch(token.sub) is None:
        raise NotAuthorizedException("the token's sub must be a user ID of 1 to 128 characters")
    stream_of = None
    if token.extras.get("scope") == STREAM_SCOPE:
        rid = token.extras.get("rid")
        if not isinstance(rid, str):
            raise NotAuthorizedException("the stream token names no request")
        stream_of = rid
    return Principal(
        user_id=token.sub, admin=token.extras.get("role") == "admin", stream_of=stream_of
    )


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
