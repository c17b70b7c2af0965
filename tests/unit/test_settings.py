"""Settings from the environment."""

from __future__ import annotations

import pytest

from app.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.provider) == ("127.0.0.1", 8000, "demo")
    assert settings.database_url == "sqlite+aiosqlite:///var/genstream.db"


def test_values_are_typed() -> None:
    settings = Settings.from_env(
        {"GENSTREAM_PORT": "9001", "GENSTREAM_DEMO_TOKEN_DELAY_MS": "2.5", "OTHER": "x"}
    )
    assert settings.port == 9001 and settings.demo_token_delay_ms == 2.5


@pytest.mark.parametrize(
    "env",
    [
        {"GENSTREAM_PORT": "eighty"},
        {"GENSTREAM_PROVIDER": "magic"},
        {"GENSTREAM_RUNNERS": "0"},
        {"GENSTREAM_SQLITE_SYNCHRONOUS": "SOMETIMES"},
        {"GENSTREAM_GC_THRESHOLD": "700,10"},
        {"GENSTREAM_GC_THRESHOLD": "700,0,10"},
        {"GENSTREAM_GC_THRESHOLD": "lots"},
        {"GENSTREAM_SHED_LAG_MS": "-1"},
        {"GENSTREAM_WORKERS": "0"},
        {"GENSTREAM_WORKERS": "65"},
        {"GENSTREAM_WORKERS": "2", "GENSTREAM_DATABASE_URL": "sqlite+aiosqlite:///:memory:"},
        {"GENSTREAM_WRITER_WATCHDOG_S": "0"},
        # (With workers on SQLite, not longer than the 5 s busy timeout.)
        {"GENSTREAM_WRITER_WATCHDOG_S": "5", "GENSTREAM_WORKERS": "2"},
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="GENSTREAM_"):
        Settings.from_env(env)


def test_gc_thresholds_are_three_integers() -> None:
    assert Settings.from_env({}).gc_thresholds == (100_000, 20, 100)
    assert Settings.from_env({"GENSTREAM_GC_THRESHOLD": "700,10,10"}).gc_thresholds == (700, 10, 10)


def test_sqlite_path() -> None:
    assert str(Settings().sqlite_path) == "var/genstream.db"
    assert Settings(database_url="postgresql+asyncpg://h/db").sqlite_path is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.4", "example.com", "::"])
def test_only_loopback_hosts_without_authentication(host: str) -> None:
    with pytest.raises(SettingsError, match="GENSTREAM_JWT_SECRET"):
        Settings.from_env({"GENSTREAM_HOST": host})
    secret = "s" * 32
    assert Settings.from_env({"GENSTREAM_HOST": host, "GENSTREAM_JWT_SECRET": secret}).host == host


def test_short_secrets_are_refused() -> None:
    with pytest.raises(SettingsError, match="32"):
        Settings.from_env({"GENSTREAM_JWT_SECRET": "short"})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_fine(host: str) -> None:
    assert Settings.from_env({"GENSTREAM_HOST": host}).host == host


def test_openai_settings_use_the_standard_variable_names() -> None:
    settings = Settings.from_env(
        {
            "GENSTREAM_PROVIDER": "openai",
            "GENSTREAM_MODEL": "llama3.1",
            "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
            "OPENAI_API_KEY": "sk-secret",
        }
    )
    assert settings.openai_base_url == "http://127.0.0.1:11434/v1"
    assert settings.openai_api_key == "sk-secret"
    assert "sk-secret" not in repr(settings)


def test_openai_needs_a_model_and_an_http_url() -> None:
    with pytest.raises(SettingsError, match="GENSTREAM_MODEL"):
        Settings.from_env({"GENSTREAM_PROVIDER": "openai"})
    with pytest.raises(SettingsError, match="OPENAI_BASE_URL"):
        Settings.from_env(
            {"GENSTREAM_PROVIDER": "openai", "GENSTREAM_MODEL": "m", "OPENAI_BASE_URL": "ftp://x"}
        )


def test_the_demo_names_its_model() -> None:
    assert Settings.from_env({}).model == "genstream-demo-1"


def test_database_urls_name_a_supported_driver() -> None:
    with pytest.raises(SettingsError, match="GENSTREAM_DATABASE_URL"):
        Settings.from_env({"GENSTREAM_DATABASE_URL": "mysql://x/y"})
    url = "postgresql+asyncpg://u:p@127.0.0.1:5432/db"
    assert Settings.from_env({"GENSTREAM_DATABASE_URL": url}).sqlite_path is None


def test_an_unknown_log_level_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="GENSTREAM_LOG_LEVEL"):
        Settings.from_env({"GENSTREAM_LOG_LEVEL": "loud"})


def test_the_writer_watchdog_is_checked_only_where_there_is_a_log_writer() -> None:
    # One process (or PostgreSQL) runs no log writer: a long busy timeout is its own affair.
    settings = Settings.from_env({"GENSTREAM_SQLITE_BUSY_TIMEOUT_MS": "60000"})
    assert settings.writer_watchdog_s == 30.0
