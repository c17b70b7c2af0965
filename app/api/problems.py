"""Errors as RFC 9457 problem details, each with a code and what to do about it."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy.exc import OperationalError

from app.store.writer import WriterUnavailable

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem details body."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class ProblemError(Exception):
    """Raised by handlers to answer with a problem details response."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()
        self.headers = headers or {}
        self.errors = errors


_MEANINGS = {
    400: "Invalid input: malformed JSON, wrong types, bad IDs or parameters",
    401: "Missing, malformed, expired or forged credentials",
    403: "The credentials are valid but lack the admin role",
    404: "No such request (another user's request is reported the same way)",
    409: "Conflicts with the request's state",
    410: "The request's events were deleted by retention",
    413: "The request body is too large",
    429: "Too many active requests; see Retry-After",
    503: "The event log's database could not serve this now; see Retry-After",
}


def problem_specs(*statuses: int, database: bool = True) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problem responses a route can give: 401 on every one, and
    503 ``log_unavailable`` on every one that uses the ``database``."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=_MEANINGS[status],
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in sorted({401, *statuses, *([503] if database else [])})
    }


def problem_response(request: Request[Any, Any, Any], exc: ProblemError) -> Response[Problem]:
    """The problem details response for ``exc``."""
    body = Problem(
        type=f"/problems/{exc.code}",
        title=exc.title,
        status=exc.status,
        detail=exc.detail,
        code=exc.code,
        instance=request.url.path,
        errors=exc.errors,
    )
    return Response(
        body, status_code=exc.status, media_type=PROBLEM_MEDIA_TYPE, headers=exc.headers
    )


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    410: "request_purged",
    413: "body_too_large",
    429: "too_many_requests",
}


def http_exception_handler(
    request: Request[Any, Any, Any], exc: HTTPException
) -> Response[Problem]:
    """Framework errors (unknown route, body too large, bad parameter) as problems."""
    status = exc.status_code
    code = _CODES.get(status, "http_error")
    detail = exc.detail
    errors: list[dict[str, Any]] | None = None
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        errors = [e for e in exc.extra if isinstance(e, dict)]
        detail = (
            "; ".join(f"{e.get('key', 'input')}: {e.get('message', 'invalid')}" for e in errors)
            or detail
        )
        code = "invalid_parameter"
    if status == 413:
        detail = "the request body is too large; send a smaller prompt or context"
    if status == 404 and code == "not_found":
        detail = f"no route {request.method} {request.url.path}"
    headers = dict(exc.headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="genstream"')
    return problem_response(
        request,
        ProblemError(status, code, detail, headers=headers, errors=errors),
    )


def nesting_error_handler(
    request: Request[Any, Any, Any], exc: RecursionError
) -> Response[Problem]:
    """JSON nested so deeply that decoding it gave up."""
    return problem_response(
        request,
        ProblemError(400, "json_too_deep", "the JSON body nests too deeply; flatten it"),
    )


def log_unavailable_handler(
    request: Request[Any, Any, Any], exc: OperationalError | WriterUnavailable
) -> Response[Problem]:
    """What the event log could not do: the database refused a write or a read (locked past
    the busy timeout, disk full or failing), or the log writer process went away
    before it answered a write."""
    log.error("the event log failed %s %s: %s", request.method, request.url.path, exc)
    if request.method in ("GET", "HEAD"):
        detail = "the event log's database could not answer this now: retry it"
    elif isinstance(exc, WriterUnavailable):
        detail = (
            "the event log's writer went away before confirming this write, so it may have "
            "been stored: retry with the same Idempotency-Key, which returns the request "
            "if it was"
        )
    else:
        detail = "the database refused this write, and nothing of it was stored: retry it"
    return problem_response(
        request,
        ProblemError(503, "log_unavailable", detail, headers={"Retry-After": "1"}),
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """Anything unexpected: logged with its traceback, answered without internals."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request,
        ProblemError(
            HTTP_500_INTERNAL_SERVER_ERROR,
            "internal",
            "the service failed to handle this request; it has been logged",
        ),
    )
