"""The layering of DESIGN section 1, read off the import lines."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((APP / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("domain"), ids=lambda p: p.name)
def test_domain_imports_only_the_standard_library_and_msgspec(path: Path) -> None:
    for name in imports(path):
        top = name.split(".")[0]
        assert (
            top in sys.stdlib_module_names or top == "msgspec" or name.startswith("app.domain")
        ), f"{path.name} imports {name}"
        assert top not in {"asyncio", "sqlalchemy", "litestar"}, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", modules("store"), ids=lambda p: p.name)
def test_store_imports_no_generation_or_api(path: Path) -> None:
    for name in imports(path):
        assert not name.startswith(("app.generation", "app.api", "app.cli", "app.settings"))


@pytest.mark.parametrize("path", modules("generation"), ids=lambda p: p.name)
def test_generation_imports_no_api_and_no_settings(path: Path) -> None:
    for name in imports(path):
        assert not name.startswith(("app.api", "app.cli", "app.settings"))
        if path.name != "openai.py":
            assert name.split(".")[0] != "openai"
