"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from app.api.schemas import Health
from app.api.services import services


@get("/health", tags=["operations"], summary="Liveness")
async def health() -> Health:
    """The process is up and serving HTTP."""
    return Health(status="ok")


@get(
    "/ready",
    tags=["operations"],
    summary="Readiness: database reachable, schema at head",
    responses={503: ResponseSpec(data_container=Health, description="Not ready: see checks")},
)
async def ready(state: State) -> Response[Health]:
    """503 until the database answers and its schema is at the migration head."""
    svc = services(state)
    checks: dict[str, str] = {}
    try:
        version = await svc.engines.schema_version()
        checks["database"] = "ok"
        if svc.migrations_head is None or version == svc.migrations_head:
            checks["migrations"] = "ok"
        else:
            checks["migrations"] = (
                f"database at {version}, code expects {svc.migrations_head}: "
                "run alembic upgrade head"
            )
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values()) and len(checks) == 2
    return Response(
        Health(status="ok" if ok else "unavailable", checks=checks), status_code=200 if ok else 503
    )


@get("/metrics", tags=["operations"], summary="Prometheus metrics", media_type="text/plain")
async def metrics(state: State) -> Response[str]:
    """Counters of the log writer, the runners and the streams, in Prometheus text format."""
    svc = services(state)
    stats = svc.log.stats
    lines = [
        "# HELP genstream_log_commits_total Group-commit transactions of the event log.",
        "# TYPE genstream_log_commits_total counter",
        f"genstream_log_commits_total {stats.commits}",
        "# HELP genstream_log_events_total Events appended to the log.",
        "# TYPE genstream_log_events_total counter",
        f"genstream_log_events_total {stats.events}",
        "# HELP genstream_log_appends_total Append calls folded into commits.",
        "# TYPE genstream_log_appends_total counter",
        f"genstream_log_appends_total {stats.appends}",
        "# HELP genstream_log_largest_batch Most appends committed in one transaction.",
        "# TYPE genstream_log_largest_batch gauge",
        f"genstream_log_largest_batch {stats.largest_batch}",
        "# HELP genstream_runner_active Generations running in this process.",
        "# TYPE genstream_runner_active gauge",
        f"genstream_runner_active {svc.pool.active}",
        "# HELP genstream_sse_open_streams Open SSE connections.",
        "# TYPE genstream_sse_open_streams gauge",
        f"genstream_sse_open_streams {svc.open_streams}",
        "",
    ]
    return Response("\n".join(lines), media_type="text/plain; version=0.0.4")
