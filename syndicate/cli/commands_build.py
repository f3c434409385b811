"""Commands: build."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from syndicate.cli import AppContext, cli, echo, pass_app
from syndicate.errors import EXIT_FAILED
from syndicate.load import SEEDS_HINT, check_dump_paths
from syndicate.output import check_writable_folder
from syndicate.publish import BuildSummary, check_clock, run_build


class _ProgressBar:
    """A click progress bar on stderr, created when the total is first known."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if total == 0:
                return
            # Redraw about 200 times per run, not once per dump (100,000 redraws is megabytes).
            self.bar = click.progressbar(
                length=total,
                label="Reading dumps",
                file=sys.stderr,
                show_pos=True,
                update_min_steps=max(1, total // 200),
            )
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _shown_dir(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        rel = str(path)
    shown = rel if not rel.startswith("..") else str(path)
    return shown.rstrip("/") + "/"


def format_summary(summary: BuildSummary, output: Path) -> str:
    """The one summary line of a build."""
    line = (
        f"Built {_plural(summary.articles, 'article', 'articles')} "
        f"({_plural(summary.duplicates, 'duplicate', 'duplicates')}, "
        f"{summary.skipped} skipped) into {_shown_dir(output)}: "
        f"{_plural(summary.written, 'file', 'files')} written, {summary.unchanged} unchanged"
    )
    if summary.removed:
        line += f", {summary.removed} removed"
    return f"{line} in {summary.seconds:.2f} s."


@cli.command("build")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--strict", is_flag=True, help="Exit with 1 when any dump was skipped.")
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Build even when the folders hold no dump while earlier builds read some "
    "(this empties the site; without it the build refuses, exit 2).",
)
@pass_app
def build_command(
    app: AppContext, paths: tuple[Path, ...], strict: bool, allow_empty: bool
) -> None:
    """Build feeds and article pages from the dumps (default: paths.seeds).

    Example: syndicate build seeds/ --strict
    """
    settings = app.settings
    # Before the database or the output folder is made: bad input leaves nothing behind.
    if paths:
        check_dump_paths(
            list(paths), hint="Give existing dump files or folders (the default is paths.seeds)."
        )
    else:
        check_dump_paths([settings.paths.seeds], hint=SEEDS_HINT)
    check_writable_folder(settings.paths.output, name="config key paths.output")
    now = datetime.fromtimestamp(app.now(), UTC)
    check_clock(now)
    bar = _ProgressBar() if sys.stderr.isatty() and not app.quiet else None
    try:
        summary = run_build(
            settings,
            app.database,
            now=now,
            paths=list(paths) or None,
            progress=bar,
            allow_empty=allow_empty,
        )
    finally:
        if bar is not None:
            bar.close()
    app.echo(format_summary(summary, settings.paths.output))
    if strict and summary.skipped:
        if app.quiet:
            # -q hid the warnings; under --strict a skip is an error, so name each file.
            for error in summary.errors:
                echo(f"error: {error}", err=True)
        where = "listed above" if app.quiet else "see the warnings above"
        echo(
            f"Error: {_plural(summary.skipped, 'dump was', 'dumps were')} skipped "
            f"and --strict is set. Fix or remove them ({where}).",
            err=True,
        )
        click.get_current_context().exit(EXIT_FAILED)
