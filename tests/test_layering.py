"""The import rules of STYLE.md section 1, checked by parsing every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "syndicate"

BASE = {"model", "text", "errors", "config", "i18n", "urls", "interrupts"}
# STYLE.md section 1, as written there: what each stage imports besides the base (the base
# modules import only each other). Packages count by their top name.
DIRECT: dict[str, set[str]] = {
    "load": set(),
    "feeds": set(),
    "site": set(),
    "digest": set(),
    "tokens": set(),
    "store": set(),
    "output": set(),
    "publish": {"load", "feeds", "site", "store", "output"},
    "mail": {"digest", "tokens"},
    "send": {"mail", "store", "publish", "output"},
    "web": {"store", "tokens", "mail", "send"},
    # Edges the map does not name yet (proposed for STYLE.md): preflight checks DNS and
    # SMTP as send sends; bounces parses bounce mail and applies it through the store.
    "preflight": {"send"},
    "bounces": {"tokens", "mail", "store"},
}


def _layered(stage: str) -> set[str]:
    """What `stage` may import: its own row, and what those stages may import (layers)."""
    allowed, todo = set(BASE), list(DIRECT.get(stage, set()))
    while todo:
        name = todo.pop()
        if name not in allowed:
            allowed.add(name)
            todo.extend(DIRECT.get(name, set()))
    return allowed


ALLOWED: dict[str, set[str]] = {name: BASE - {name} for name in BASE}
ALLOWED.update({name: _layered(name) for name in DIRECT})
# Single imports that break the map today, each with the change that removes it. The list
# only shrinks: a test fails when an entry is no longer needed.
# Modules allowed one import past the map, each with its reason. None today: keep it so.
KNOWN_EXCEPTIONS: dict[str, set[str]] = {}
# Stages that must stay pure: no database, SMTP, sockets or subprocesses.
PURE = {"model", "text", "i18n", "urls", "load", "feeds", "site", "digest", "tokens", "mail"}
IMPURE_MODULES = {"sqlite3", "aiosmtplib", "socket", "subprocess", "smtplib", "asyncio", "httpx"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def _stage(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    if len(rel.parts) > 1:
        return rel.parts[0]
    return rel.stem


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "syndicate":
                names.update(f"syndicate.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_follow_the_layering(path: Path) -> None:
    stage = _stage(path)
    if stage in {"__init__", "cli"}:
        return
    assert stage in ALLOWED, f"{stage} has no layering rule; add it to tests/test_layering.py"
    own = {
        name.split(".")[1]
        for name in _imports(path)
        if name.startswith("syndicate.") and len(name.split(".")) > 1
    }
    own.discard(stage)
    extra = own - ALLOWED[stage] - KNOWN_EXCEPTIONS.get(str(path.relative_to(PACKAGE)), set())
    assert not extra, f"syndicate/{path.relative_to(PACKAGE)} imports {sorted(extra)}"
    assert "cli" not in own


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if _stage(p) in PURE],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_pure_stages_touch_no_database_or_network(path: Path) -> None:
    top = {name.split(".")[0] for name in _imports(path)}
    assert not (top & IMPURE_MODULES), f"{path.name} imports {sorted(top & IMPURE_MODULES)}"


def test_only_the_cli_imports_web() -> None:
    for path in _modules():
        if _stage(path) in {"cli", "web"}:
            continue
        assert "syndicate.web" not in _imports(path), f"{path.name} imports syndicate.web"


def test_known_layering_exceptions_are_still_needed() -> None:
    for rel, allowed in KNOWN_EXCEPTIONS.items():
        path = PACKAGE / rel
        own = {n.split(".")[1] for n in _imports(path) if n.startswith("syndicate.")}
        still = allowed & (own - ALLOWED[_stage(path)])
        assert still == allowed, f"drop {sorted(allowed - still)} for {rel}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private_imports(path: Path) -> list[str]:
    """`from syndicate.x import _y` in `path`, where syndicate.x is another module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path) if path.is_relative_to(PACKAGE) else ""
    return [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.level == 0
        and node.module
        and node.module.split(".")[0] == "syndicate"
        and node.module != here
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]


@pytest.mark.parametrize(
    "path",
    [
        *_modules(),
        *sorted((PACKAGE.parent / "tests").rglob("*.py")),
        *sorted((PACKAGE.parent / "bench").rglob("*.py")),
    ],
    ids=lambda p: str(p.relative_to(PACKAGE.parent)),
)
def test_no_private_name_is_imported_from_another_module(path: Path) -> None:
    found = _private_imports(path)
    assert not found, f"{path.relative_to(PACKAGE.parent)} imports private names {found}"


def test_only_config_makes_a_jinja_environment() -> None:
    # One factory (config.make_environment) for site pages, web pages and email.
    makers = sorted(
        str(path.relative_to(PACKAGE))
        for path in _modules()
        if "jinja2.Environment(" in path.read_text(encoding="utf-8")
    )
    assert makers == ["config.py"]
