"""The app factory: builds the service from Settings."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from litestar import Litestar
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from sqlalchemy.exc import OperationalError

from app.api.audit import AuditController
from app.api.auth import AuthMiddleware
from app.api.health import health, metrics, ready
from app.api.overload import LoadShedder
from app.api.problems import (
    ProblemError,
    http_exception_handler,
    internal_error_handler,
    log_unavailable_handler,
    nesting_error_handler,
    problem_response,
)
from app.api.requests import RequestController
from app.api.services import ApiLimits, Services
from app.api.shedding import shed_new_generations
from app.api.static import static_router
from app.api.stream import StreamController
from app.api.tracks import track_content
from app.domain.events import utcnow
from app.domain.markers import MarkerLimits
from app.generation.pool import RunnerPool
from app.generation.providers.base import Provider
from app.generation.providers.demo import DemoProvider
from app.generation.runner import Runner, RunnerConfig
from app.settings import Settings
from app.store.engine import create_engines
from app.store.log import EventLog
from app.store.notify import CommitListener
from app.store.peers import PeerLink
from app.store.queue import WorkQueue
from app.store.retention import purge_ended_before
from app.store.writer import RemoteWriter, WriterUnavailable

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class SchemaNotReady(RuntimeError):
    """The database schema is not the one this code was written for."""


def started_marker(peer_dir: Path, pid: int) -> Path:
    """The file a worker creates once it serves (``genstream serve`` with several workers):
    one that exits on its own before it exists failed to start."""
    return peer_dir / f"{pid}.started"


async def schema_problem(svc: Services) -> str | None:
    """What to do when the database is not at this code's migration head; None if it is."""
    version = await svc.engines.schema_version()
    if svc.migrations_head is None or version == svc.migrations_head:
        return None
    return (
        f"the database is at schema {version or 'none (empty)'}, this code needs "
        f"{svc.migrations_head}: run `alembic upgrade head` (scripts/serve does) first"
    )


def migrations_head() -> str | None:
    """The newest Alembic revision shipped with this code."""
    if not MIGRATIONS_DIR.is_dir():
        return None
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def build_provider(settings: Settings) -> Provider:
    """The model provider the settings name."""
    if settings.provider == "openai":
        # Imported here so that the demo never loads the openai client.
        from app.generation.providers.openai import OpenAIProvider

        return OpenAIProvider(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            model=settings.model,
            connect_timeout_s=settings.openai_connect_timeout_s,
            read_timeout_s=settings.openai_read_timeout_s,
            max_retries=settings.openai_max_retries,
            retry_backoff_s=settings.openai_retry_backoff_s,
        )
    return DemoProvider(token_delay_ms=settings.demo_token_delay_ms)


def build_services(settings: Settings) -> Services:
    """Wire the log, queue, runner pool and limits from settings."""
    engines = create_engines(
        settings.database_url,
        sqlite_synchronous=settings.sqlite_synchronous,
        sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        sqlite_workers=bool(settings.peer_dir),
    )
    event_log = EventLog(
        engines,
        batch_max=settings.commit_batch_max,
        poll_s=settings.poll_interval_s,
        remote=RemoteWriter(Path(settings.writer_socket)) if settings.writer_socket else None,
    )
    node = f"node-{secrets.token_hex(6)}"
    queue = WorkQueue(engines, owner=node, lease_s=settings.lease_s)
    provider = build_provider(settings)
    runner = Runner(
        event_log,
        provider,
        RunnerConfig(
            flush_interval_s=settings.flush_interval_ms / 1000.0,
            flush_max_chars=settings.flush_max_chars,
            timeout_s=settings.generation_timeout_s,
            node=node,
            marker_limits=MarkerLimits(),
        ),
    )
    pool = RunnerPool(
        runner, queue, event_log, size=settings.runners, lease_renew_s=settings.lease_renew_s
    )
    return Services(
        provider=provider,
        engines=engines,
        log=event_log,
        queue=queue,
        pool=pool,
        generation=runner.stats,
        limits=ApiLimits(
            max_prompt_chars=settings.max_prompt_chars,
            max_context_bytes=settings.max_context_bytes,
            max_active_per_user=settings.max_active_per_user,
            rate_per_minute=settings.rate_per_minute,
            sse_retry_ms=settings.sse_retry_ms,
            sse_ping_interval_s=settings.sse_ping_interval_s,
            stream_idle_timeout_s=settings.stream_idle_timeout_s,
            model=settings.model,
        ),
        migrations_head=migrations_head(),
        shedder=LoadShedder(settings.shed_lag_ms / 1000.0, write_delay_s=event_log.write_delay_s),
        jwt_secret=settings.jwt_secret,
        stream_token_ttl=timedelta(seconds=settings.stream_token_ttl_s),
    )


async def purge_periodically(svc: Services, retention_s: float, interval_s: float) -> None:
    """Purge requests that ended more than ``retention_s`` ago, every ``interval_s``."""
    while True:
        try:
            cutoff = utcnow() - timedelta(seconds=retention_s)
            purged = await purge_ended_before(svc.engines, cutoff)
            if purged:
                log.info("retention purged %d requests that ended before %s", purged, cutoff)
        except Exception:
            log.exception("retention purge failed; retrying at the next interval")
        await asyncio.sleep(interval_s)


def create_app(settings: Settings | None = None) -> Litestar:
    """The genstream Litestar application."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        svc = build_services(settings)
        app.state["services"] = svc
        if (message := await schema_problem(svc)) is not None:
            await svc.engines.dispose()
            log.error(message)
            raise SchemaNotReady(message)
        listener = (
            CommitListener(settings.database_url, svc.log.hub) if svc.engines.postgres else None
        )
        if listener is not None:
            await listener.start()
        if settings.peer_dir and not svc.engines.postgres:
            svc.peers = PeerLink(Path(settings.peer_dir), svc.log.hub, on_created=svc.pool.notify)
            svc.log.forward = svc.peers.send
            await svc.peers.start()
        await svc.log.start()
        await svc.pool.start()
        await svc.shedder.start()
        if settings.peer_dir:  # (tells the supervisor this worker started)
            started_marker(Path(settings.peer_dir), os.getpid()).touch()
        retention = (
            asyncio.create_task(
                purge_periodically(svc, settings.retention_s, settings.retention_interval_s),
                name="retention",
            )
            if settings.retention_s > 0
            else None
        )
        try:
            yield
        finally:
            svc.begin_shutdown()
            await svc.shedder.stop()
            if retention is not None:
                retention.cancel()
                await asyncio.gather(retention, return_exceptions=True)
            await svc.pool.stop(grace_s=settings.shutdown_grace_s)
            await svc.provider.aclose()
            await svc.log.close()
            if svc.peers is not None:
                await svc.peers.close()
            if listener is not None:
                await listener.close()
            await svc.engines.dispose()

    return Litestar(
        route_handlers=[
            RequestController,
            StreamController,
            track_content,
            AuditController,
            static_router(),
            health,
            ready,
            metrics,
        ],
        lifespan=[lifespan],
        exception_handlers={
            ProblemError: problem_response,
            HTTPException: http_exception_handler,
            RecursionError: nesting_error_handler,
            OperationalError: log_unavailable_handler,
            WriterUnavailable: log_unavailable_handler,
            Exception: internal_error_handler,
        },
        # Shedding first: past saturation a refusal must cost less than the work it refuses.
        middleware=[
            shed_new_generations,
            DefineMiddleware(AuthMiddleware, secret=settings.jwt_secret),
        ],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="genstream",
            version="0.1.0",
            description="AI generations streamed over SSE from a durable event log.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        debug=False,
        # Logging is configured once, at the edge (app.logcontext, from the CLI).
        logging_config=None,
    )
