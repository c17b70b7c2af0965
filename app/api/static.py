"""The demo page at ``/`` and the browser client's files under ``/static/``, public.

The page holds no secrets and calls the API like any other client (with a Bearer token the
user pastes when auth is on), so it is served without authentication. Its Content Security
Policy allows scripts only from this origin; the preview iframe's ``srcdoc`` inherits the
policy, so even markup a model slipped past the parser cannot load scripts or images from
elsewhere (the iframe's sandbox already forbids running any script).
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router, get
from litestar.datastructures import CacheControlHeader
from litestar.response import File
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    # Stream URLs carry a request-scoped token in their query: never leak it as a referrer.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
# Revalidate every time (ETag), so a new version of the page is picked up at once.
NO_CACHE = CacheControlHeader(no_cache=True)


@get("/", include_in_schema=False, cache_control=NO_CACHE, sync_to_thread=False)
def demo_page() -> File:
    """The demo page."""
    return File(
        STATIC_DIR / "index.html",
        filename="index.html",
        content_disposition_type="inline",
        media_type="text/html",
        headers=PAGE_HEADERS,
    )


def static_router() -> Router:
    """``/`` (the demo page) and ``/static/{file}`` (its scripts and styles), public."""
    files = create_static_files_router(
        path="/static",
        directories=[STATIC_DIR],
        name="static",
        cache_control=NO_CACHE,
        include_in_schema=False,
    )
    return Router(path="/", route_handlers=[demo_page, files])
