"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from app.api.problems import ProblemError, problem_specs
from app.api.schemas import Health
from app.api.services import principal, services
from app.store.peers import PeerStats


@get("/health", tags=["operations"], summary="Liveness")
async def health(state: State) -> Health:
    """The process is up and serving HTTP; ``node`` names it among the nodes of one log."""
    return Health(status="ok", node=services(state).queue.owner)


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
        Health(status="ok" if ok else "unavailable", checks=checks, node=svc.queue.owner),
        status_code=200 if ok else 503,
    )


@get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    media_type="text/plain",
    responses=problem_specs(403, database=False),
)
async def metrics(request: Request[Any, Any, State], state: State) -> Response[str]:
    """The service's counters, gauges and histograms in Prometheus text format (admins)."""
    if not principal(request).admin:
        raise ProblemError(
            403,
            "admin_only",
            "metrics cover every user; use a token minted with --admin",
        )
    svc = services(state)
    log_stats, gen, streams = svc.log.stats, svc.generation, svc.streams
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: dict[str, float]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples.items())

    def by(label: str, counts: dict[str, int]) -> dict[str, float]:
        return {f'{{{label}="{key}"}}': value for key, value in sorted(counts.items())}

    metric(
        "genstream_queue_depth",
        "gauge",
        "Requests waiting for a runner.",
        {"": await svc.queue.depth()},
    )
    metric(
        "genstream_lag_seconds",
        "gauge",
        "How far behind the process runs (event-loop lag or log write delay), smoothed.",
        {"": round(svc.shedder.gauge.lag_s, 6)},
    )
    metric(
        "genstream_saturated",
        "gauge",
        "1 while new requests are refused with 429 overloaded, else 0.",
        {"": int(svc.shedder.saturated)},
    )
    metric(
        "genstream_shed_total",
        "counter",
        "New requests refused with 429 overloaded because the process was saturated.",
        {"": svc.shedder.shed},
    )
    peers = svc.peers.stats if svc.peers is not None else PeerStats()
    metric(
        "genstream_worker_info",
        "gauge",
        "The worker process that answered this scrape (each worker keeps its own figures).",
        {f'{{pid="{os.getpid()}"}}': 1},
    )
    metric(
        "genstream_peers",
        "gauge",
        "Other worker processes this one ships its commits to.",
        {"": svc.peers.peers if svc.peers is not None else 0},
    )
    metric(
        "genstream_peer_events_total",
        "counter",
        "Events shipped to, and received from, other worker processes.",
        {'{direction="sent"}': peers.sent, '{direction="received"}': peers.received},
    )
    metric(
        "genstream_peer_dropped_links_total",
        "counter",
        "Connections to other workers closed because the worker stopped reading.",
        {"": peers.dropped_links},
    )
    metric(
        "genstream_runner_active",
        "gauge",
        "Generations running in this process.",
        {"": svc.pool.active},
    )
    metric(
        "genstream_generations_total",
        "counter",
        "Generations ended, by terminal event.",
        by("ending", gen.endings),
    )
    metric(
        "genstream_generation_errors_total",
        "counter",
        "Generations that failed, by code.",
        by("code", gen.errors_by_code),
    )
    lines += gen.durations_s.exposition(
        "genstream_generation_duration_seconds", "From a runner taking a request to its end."
    )
    lines += gen.first_chunk_s.exposition(
        "genstream_time_to_first_chunk_seconds", "From a runner taking a request to model text."
    )
    metric(
        "genstream_log_commits_total",
        "counter",
        "Group-commit transactions of the log.",
        {"": log_stats.commits},
    )
    metric(
        "genstream_log_events_total",
        "counter",
        "Events appended to the log.",
        {"": log_stats.events},
    )
    metric(
        "genstream_log_events_by_type_total",
        "counter",
        "Events appended, by type.",
        by("type", log_stats.by_type),
    )
    metric(
        "genstream_log_appends_total",
        "counter",
        "Append calls folded into commits.",
        {"": log_stats.appends},
    )
    metric(
        "genstream_log_largest_batch",
        "gauge",
        "Most appends in one transaction.",
        {"": log_stats.largest_batch},
    )
    lines += log_stats.batch_sizes.exposition(
        "genstream_log_batch_size", "Appends committed per group-commit transaction."
    )
    lines += log_stats.write_delay_s.exposition(
        "genstream_log_write_delay_seconds",
        "Per batch of appends, from the oldest one's arrival until all were answered.",
    )
    lines += log_stats.transaction_s.exposition(
        "genstream_log_transaction_seconds",
        "Per committed transaction, from its hand-over to the database until it came back.",
    )
    metric("genstream_sse_open_streams", "gauge", "Open SSE connections.", {"": streams.open})
    metric(
        "genstream_sse_connections_total", "counter", "SSE connections opened.", {"": streams.total}
    )
    metric(
        "genstream_sse_resumes_total",
        "counter",
        "SSE connections resuming (Last-Event-ID).",
        {"": streams.resumes},
    )
    lines += streams.durations_s.exposition(
        "genstream_sse_connection_duration_seconds", "How long SSE connections stayed open."
    )
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
