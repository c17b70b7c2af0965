"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract.conftest import migrate


@pytest.fixture
def migrated_sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file migrated to the head, by its URL."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'genstream.db'}"
    migrate(url)
    return url
