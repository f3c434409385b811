"""syndicate.example.toml sets every key, each to its embedded default."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from syndicate.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "syndicate.example.toml"


def _schema_keys() -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    for section in dataclasses.fields(Settings):
        cls = section.default_factory  # type: ignore[misc]
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            keys[section.name] = {
                f.name.rstrip("_")
                for f in dataclasses.fields(cls)
                if (section.name, f.name) != ("smtp", "password")
            }
    return keys


def test_example_config_sets_every_key() -> None:
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert {name: set(table) for name, table in raw.items()} == _schema_keys()


def test_example_config_loads_to_the_defaults() -> None:
    loaded = load_settings(EXAMPLE, {}, cwd=ROOT)
    defaults = load_settings(None, {}, cwd=ROOT)
    assert loaded.config_path == EXAMPLE
    assert dataclasses.replace(loaded, config_path=None) == defaults
