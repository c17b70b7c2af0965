"""Refusing new generations while the process is saturated, before any work is spent on them.

While the load shedder (``api/overload.py``) says the process is saturated, a POST that
would start a generation is answered 429 ``overloaded`` here, the first middleware after
routing: no authentication, body parsing or database read. Under overload, clients
retry every second or so; each refusal must cost next to nothing, or refusing becomes
the load. So an unauthenticated POST gets 429 rather than 401 while the process sheds:
it learns only that the service is busy, and its retry gets the 401.
"""

from __future__ import annotations

import re

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

from app.api.problems import PROBLEM_MEDIA_TYPE, Problem
from app.api.services import Services

STARTS_GENERATION = re.compile(r"/assistant/(request|generate|requests/[^/]+/regenerate)/?")
DETAIL = (
    "the service is at capacity and is finishing the generations it has; "
    "retry after the Retry-After delay"
)


def shed_new_generations(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: the 429 ``overloaded`` answer for new generations past saturation."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == ScopeType.HTTP
            and scope.get("method") == "POST"
            and STARTS_GENERATION.fullmatch(scope["path"])
        ):
            svc: Services = scope["app"].state["services"]
            if svc.shedder.saturated:
                svc.shedder.refuse()
                await _refuse(scope["path"], send)
                return
        await app(scope, receive, send)

    return middleware


async def _refuse(path: str, send: Send) -> None:
    body = msgspec.json.encode(
        Problem(
            type="/problems/overloaded",
            title="Overloaded",
            status=429,
            detail=DETAIL,
            code="overloaded",
            instance=path,
        )
    )
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 429,
        "headers": [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
        ],
    }
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(start)
    await send(end)
