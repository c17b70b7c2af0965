"""Settings, read once from the environment (``GENSTREAM_*``) at the edge of the program."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///var/genstream.db"
DEMO_MODEL = "genstream-demo-1"
# Settings read from the names every OpenAI client uses, not GENSTREAM_*.
ENV_NAMES = {"openai_base_url": "OPENAI_BASE_URL", "openai_api_key": "OPENAI_API_KEY"}


class SettingsError(ValueError):
    """An environment variable has a value genstream cannot use."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every tunable of the service, with its default."""

    host: str = "127.0.0.1"
    """Address the HTTP server binds to."""
    port: int = 8000
    """Port the HTTP server binds to."""
    database_url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy async URL of the event log."""
    sqlite_synchronous: str = "NORMAL"
    """SQLite ``PRAGMA synchronous`` (NORMAL is durable across process crashes in WAL)."""
    sqlite_busy_timeout_ms: int = 5_000
    """How long a SQLite connection waits for a lock before failing."""
    provider: str = "demo"
    """Model provider: ``demo`` (embedded, offline) or ``openai`` (any compatible server)."""
    model: str = ""
    """Model name sent to the provider (required for ``openai``; demo: genstream-demo-1)."""
    openai_base_url: str = "https://api.openai.com/v1"
    """OPENAI_BASE_URL: the OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI)."""
    openai_api_key: str = field(default="", repr=False)
    """OPENAI_API_KEY: sent as a bearer token; empty for local servers that take none."""
    openai_connect_timeout_s: float = 10.0
    """Connecting to the model server gives up after this long."""
    openai_read_timeout_s: float = 60.0
    """A model stream with no data for this long fails with provider_timeout."""
    openai_max_retries: int = 2
    """Retries of a failed model call, only before its first token."""
    openai_retry_backoff_s: float = 0.5
    """First retry delay; it doubles with each retry."""
    demo_token_delay_ms: float = 15.0
    """Pause between tokens of the demo model."""
    workers: int = 1
    """Processes ``genstream serve`` runs, each serving HTTP and running generations on one
    shared database (one Python process uses about one core)."""
    peer_dir: str = ""
    """Set by ``genstream serve`` for its worker processes: where they reach each other."""
    writer_socket: str = ""
    """Set by ``genstream serve`` for its worker processes on SQLite: the socket of the
    log writer process, which runs every worker's group commits (``store/writer.py``)."""
    writer_watchdog_s: float = 30.0
    """With workers on SQLite: a log writer that answers nothing for this long is taken
    as hung, killed and replaced (longer than the busy timeout, which a commit may wait)."""
    runners: int = 8
    """Generations run concurrently by each worker process."""
    flush_interval_ms: float = 50.0
    """Model deltas are coalesced into one event per interval..."""
    flush_max_chars: int = 2_048
    """...or as soon as this many characters are buffered."""
    generation_timeout_s: float = 300.0
    """A generation running longer ends with ``error{code: timeout}``."""
    max_active_per_user: int = 5
    """Queued plus running requests one user may have (429 beyond)."""
    rate_per_minute: int = 30
    """New requests one user may create per mode in any 60 seconds (429 beyond)."""
    shed_lag_ms: float = 30.0
    """New requests get 429 while the event loop, or the log's commits, run this late on
    average (0 = never)."""
    jwt_secret: str = field(default="", repr=False)
    """HS256 secret for bearer tokens; empty = local mode (one user, loopback only)."""
    stream_token_ttl_s: float = 600.0
    """Lifetime of the request-scoped token in a POST response's stream_url."""
    retention_s: float = 0.0
    """Requests that ended longer ago than this are purged (0 = keep everything)."""
    retention_interval_s: float = 3600.0
    """How often the service purges when retention is on."""
    shutdown_grace_s: float = 5.0
    """On shutdown, running generations get this long before they end as interrupted."""
    max_prompt_chars: int = 20_000
    """Longest accepted prompt."""
    max_context_bytes: int = 65_536
    """Largest accepted ``context`` object, as JSON."""
    max_body_bytes: int = 262_144
    """Largest accepted request body (413 beyond)."""
    sse_retry_ms: int = 2_000
    """Reconnect delay suggested to EventSource clients."""
    sse_ping_interval_s: float = 15.0
    """A ``: ping`` comment is sent after this long without an event."""
    stream_idle_timeout_s: float = 60.0
    """A stream with no new event for this long is closed (the client resumes)."""
    lease_s: float = 30.0
    """A runner's claim on a request; a node that stops renewing it is taken as dead."""
    lease_renew_s: float = 10.0
    """How often a node renews its leases and ends the requests of dead nodes."""
    poll_interval_s: float = 1.0
    """PostgreSQL: streams also check the log this often (a lost NOTIFY costs no more)."""
    commit_batch_max: int = 1_024
    """Most appends folded into one group-commit transaction."""
    log_level: str = "info"
    """Log level of the service."""
    gc_threshold: str = "100000,20,100"
    """Python's cycle-collector thresholds (generation 0, 1, 2) for the service."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``GENSTREAM_*`` variables; unknown names are ignored."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = ENV_NAMES.get(f.name, f"GENSTREAM_{f.name.upper()}")
            if key not in env:
                continue
            raw = env[key]
            kind = type(getattr(cls(), f.name))
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise SettingsError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
        settings = cls(**values)
        if not settings.model and settings.provider == "demo":
            settings = replace(settings, model=DEMO_MODEL)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject values that cannot work, with the variable to fix."""
        if not self.database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise SettingsError(
                "GENSTREAM_DATABASE_URL must be sqlite+aiosqlite:///PATH or "
                "postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB"
            )
        if self.provider not in {"demo", "openai"}:
            raise SettingsError(f"GENSTREAM_PROVIDER={self.provider!r}: use demo or openai")
        if self.provider == "openai" and not self.model:
            raise SettingsError(
                "GENSTREAM_MODEL is required with GENSTREAM_PROVIDER=openai "
                "(the model name the server knows, e.g. gpt-4o-mini or llama3.1)"
            )
        if self.provider == "openai" and not self.openai_base_url.startswith(
            ("http://", "https://")
        ):
            raise SettingsError("OPENAI_BASE_URL must be an http:// or https:// URL")
        if self.sqlite_synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise SettingsError("GENSTREAM_SQLITE_SYNCHRONOUS must be OFF, NORMAL, FULL or EXTRA")
        if not self.jwt_secret and not is_loopback(self.host):
            raise SettingsError(
                f"GENSTREAM_HOST={self.host!r}: without GENSTREAM_JWT_SECRET genstream runs in "
                "local mode (one user, no authentication) and only binds to a loopback "
                "address; set GENSTREAM_JWT_SECRET (32+ random characters, e.g. from "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`) to serve "
                "other hosts with bearer tokens"
            )
        for name in (
            "openai_connect_timeout_s",
            "openai_read_timeout_s",
            "stream_token_ttl_s",
            "retention_interval_s",
            "lease_s",
            "lease_renew_s",
            "poll_interval_s",
            "sse_ping_interval_s",
            "stream_idle_timeout_s",
            "generation_timeout_s",
            "writer_watchdog_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"GENSTREAM_{name.upper()} must be positive")
        if self.log_level.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise SettingsError(
                "GENSTREAM_LOG_LEVEL must be debug, info, warning, error or critical"
            )
        if (
            self.workers > 1
            and self.database_url.startswith("sqlite")
            and self.writer_watchdog_s * 1000 <= self.sqlite_busy_timeout_ms
        ):
            raise SettingsError(
                "GENSTREAM_WRITER_WATCHDOG_S must be longer than GENSTREAM_SQLITE_BUSY_TIMEOUT_MS, "
                "which a commit may wait for the write lock"
            )
        if self.lease_renew_s >= self.lease_s:
            raise SettingsError("GENSTREAM_LEASE_RENEW_S must be shorter than GENSTREAM_LEASE_S")
        try:
            if min(self.gc_thresholds) < 1:
                raise ValueError
        except ValueError:
            raise SettingsError(
                "GENSTREAM_GC_THRESHOLD must be three positive integers, such as 100000,20,100"
            ) from None
        if self.shed_lag_ms < 0:
            raise SettingsError("GENSTREAM_SHED_LAG_MS must not be negative (0 never sheds)")
        if self.retention_s < 0:
            raise SettingsError("GENSTREAM_RETENTION_S must not be negative (0 keeps all)")
        if self.openai_max_retries < 0 or self.openai_retry_backoff_s < 0:
            raise SettingsError(
                "GENSTREAM_OPENAI_MAX_RETRIES and GENSTREAM_OPENAI_RETRY_BACKOFF_S "
                "must not be negative"
            )
        if self.jwt_secret and len(self.jwt_secret) < 32:
            raise SettingsError("GENSTREAM_JWT_SECRET must be at least 32 characters")
        if not 1 <= self.workers <= 64:
            raise SettingsError("GENSTREAM_WORKERS must be between 1 and 64")
        if self.workers > 1 and self.database_url.startswith("sqlite") and not self.sqlite_path:
            raise SettingsError(
                "GENSTREAM_WORKERS above 1 needs a database file (or PostgreSQL): worker "
                "processes cannot share an in-memory SQLite database"
            )
        for name in (
            "runners",
            "max_active_per_user",
            "rate_per_minute",
            "commit_batch_max",
            "port",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"GENSTREAM_{name.upper()} must be at least 1")

    @property
    def gc_thresholds(self) -> tuple[int, int, int]:
        """``gc_threshold`` parsed (validated by ``validate``)."""
        first, second, third = (int(part) for part in self.gc_threshold.split(","))
        return first, second, third

    @property
    def sqlite_path(self) -> Path | None:
        """The database file, when the log is a SQLite file."""
        prefix = "sqlite+aiosqlite:///"
        if not self.database_url.startswith(prefix):
            return None
        path = self.database_url.removeprefix(prefix).split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(path)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
