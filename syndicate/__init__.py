"""syndicate: newsletter and RSS syndication for news article dumps."""

from __future__ import annotations

__version__ = "0.1.0"

# Importing the package imports nothing (typing included): these names are for mypy only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def lazy_attributes(namespace: dict[str, Any], homes: Mapping[str, str]) -> Callable[[str], Any]:
    """Return a package's PEP 562 `__getattr__`: each name in `homes` loaded on first use.

    `homes` maps each name to the module that defines it; `namespace` is the package's
    `globals()`, where the name is kept once loaded, so the next lookup finds it there. A
    command then loads only the parts of `syndicate.publish` or `syndicate.send` it uses.
    """

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        # Imported here: `import syndicate` imports nothing (the interpreter has it anyway).
        import importlib

        value = getattr(importlib.import_module(home), name)
        namespace[name] = value
        return value

    return __getattr__
