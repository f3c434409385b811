"""The import rules of STYLE.md section 1, checked by parsing every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "syndicate"

BASE = {"model", "text", "errors", "config", "i18n", "urls"}
# What each stage may import from syndicate (besides itself). Packages count by top name.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "model": {"errors"},
    "text": {"errors"},
    "config": {"errors"},
    "i18n": set(),
    "urls": {"errors"},
    "load": BASE,
    "feeds": BASE,
    "site": BASE,
    "digest": BASE | {"site"},
    "tokens": BASE,
    "store": BASE | {"store"},
    "output": BASE,
    "mail": BASE | {"digest", "tokens", "site"},
    "publish": BASE | {"load", "feeds", "site", "store", "output"},
    "send": BASE | {"mail", "store", "output", "digest", "tokens", "site"},
    "web": BASE | {"store", "tokens", "mail", "send", "digest", "site", "output"},
    # An edge like send: DNS and SMTP look-ups; reads the DKIM key as send does.
    "preflight": BASE | {"send"},
    # Bounce and complaint mail: parsed (pure), then applied through the store.
    "bounces": BASE | {"tokens", "mail", "store"},
}
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
    extra = own - ALLOWED[stage]
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


def test_only_config_makes_a_jinja_environment() -> None:
    # One factory (config.make_environment) for site pages, web pages and email.
    makers = sorted(
        str(path.relative_to(PACKAGE))
        for path in _modules()
        if "jinja2.Environment(" in path.read_text(encoding="utf-8")
    )
    assert makers == ["config.py"]
