"""What the commands that render nothing load as they start.

`bounces -` runs once for every bounce an MTA pipes to it, the `subscribers`
commands run from scripts, and `send --workers N` starts N worker processes: none
renders a template, a feed or a date, so none loads Jinja2, Babel, the CSS inliner,
feedgen (and lxml) or flufl.bounce's detectors at start. Measured in bench/startup.py;
this keeps an import added in the wrong place from undoing it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

RENDERING = ("jinja2", "babel", "css_inline", "feedgen", "lxml", "flufl", "email_validator")


def _loaded(module: str) -> set[str]:
    """The top-level packages loaded once `module` is imported, in a new interpreter."""
    code = (
        "import json, sys\n"
        f"import {module}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(
    "module",
    [
        "syndicate.cli.commands_bounces",
        "syndicate.cli.commands_subscribers",
        # `send --workers N` starts N of these: each sends messages its parent rendered.
        "syndicate.send.workers",
    ],
)
def test_a_command_that_renders_nothing_starts_without_the_rendering_libraries(
    module: str,
) -> None:
    loaded = _loaded(module)
    assert [name for name in RENDERING if name in loaded] == []


def test_rendering_libraries_load_where_they_are_used() -> None:
    """The check above can fail: the digest command does load them."""
    assert {"jinja2", "babel", "css_inline"} <= _loaded("syndicate.cli.commands_digest")
