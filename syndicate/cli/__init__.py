"""Command line: the click group, shared options, and the one error boundary.

Commands live in the submodules of this package and stay thin: they parse
options, call the stage functions, and print. Only this package prints.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from syndicate import __version__, interrupts
from syndicate.config import (
    Settings,
    exposed_secret_warning,
    find_config,
    load_settings,
    weak_secret_warning,
)
from syndicate.errors import (
    DiskFullError,
    OpenFilesError,
    OutOfFilesError,
    OutputError,
    ReaderGoneError,
    SyndicateError,
    log_lines_to_stderr,
    printable,
)
from syndicate.interrupts import Terminated
from syndicate.store import Database, open_database, open_empty, open_reader

log = logging.getLogger("syndicate")


def echo(
    message: str | bytes = "", *, err: bool = False, nl: bool = True, needed: bool = False
) -> None:
    """Print `message` (and a newline) on standard output, or with `err` on standard error:
    every line a command prints goes through here.

    Standard output that cannot take it raises, so the command stops where it is (a
    transaction still open rolls back; what was committed stays, whole): ReaderGoneError
    (exit 141, said nowhere) for a pipe whose reader has gone, DiskFullError (75) for a full
    disk or quota, OutputError (2) for anything else. A command started with standard output
    closed (Python then has none) prints nothing, unless the output is what it was `needed`
    for (`subscribers export -`): then OutputError.
    """
    if err:
        click.echo(message, err=True, nl=nl)
        return
    if needed and sys.stdout is None:
        raise OutputError(
            "standard output: cannot write: it is closed.",
            hint="Send the output elsewhere; nothing was half-written.",
        )
    try:
        click.echo(message, nl=nl)  # writes, then flushes
    except OSError as exc:
        raise stdout_error(exc) from None


def stdout_error(exc: OSError) -> OutputError:
    """The error for `exc`, raised by a write to standard output. Standard output then goes
    to /dev/null: what stayed in its buffer would fail again at exit, with a traceback."""
    with contextlib.suppress(OSError):  # (CliRunner's stdout has no file descriptor)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if exc.errno == errno.EPIPE:
        return ReaderGoneError("standard output: its reader has gone.")
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return (DiskFullError if full else OutputError)(
        f"standard output: cannot write: {exc.strerror or exc}.",
        hint=("Free some space or send" if full else "Send")
        + " the output elsewhere; nothing was half-written.",
    )


@dataclass
class AppContext:
    """What every command gets: options of the group, lazily loaded settings and database."""

    config_path: Path | None
    verbosity: int  # -1 quiet, 0 normal, 1+ verbose
    debug: bool
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    _settings: Settings | None = None
    _database: Database | None = None
    _reader: Database | None = None  # read_store(): the store, opened to read only
    _empty: Database | None = None  # reader when there is no store yet: one in memory
    _looked = False  # whether read_store() has looked for the store

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            path = find_config(self.config_path, self.environ, Path.cwd())
            self._settings = load_settings(path, self.environ)
            warnings = (
                weak_secret_warning(self._settings),
                exposed_secret_warning(path, self._settings, self.environ),
            )
            for warning in warnings:
                if warning is not None:
                    # Once (the settings load once a command), and under -q too: cron runs
                    # with -q, and its mail is where an operator sees that links can be forged.
                    echo(f"warning: {warning}", err=True)
        return self._settings

    @property
    def database(self) -> Database:
        if self._database is None:
            settings = self.settings
            self._database = open_database(
                settings.paths.database,
                url=settings.store.url,
                busy_timeout=settings.store.busy_timeout,
                reply_timeout=settings.store.reply_timeout,
                url_name=settings.store_url_from,
            )
        return self._database

    def read_store(self) -> Database | None:
        """The store opened to read only; None when there is none yet, and none is made.

        For the commands that only read (`inspect`, `subscribers list`): on SQLite a
        missing file, on PostgreSQL a database no command has written, is left as it is.
        """
        if not self._looked:
            settings = self.settings
            self._reader = open_reader(
                settings.paths.database,
                url=settings.store.url,
                busy_timeout=settings.store.busy_timeout,
                reply_timeout=settings.store.reply_timeout,
                url_name=settings.store_url_from,
            )
            self._looked = True
        return self._reader

    @property
    def reader(self) -> Database:
        """The store to read only: `read_store()`, or an empty one in memory when there is
        none yet, so a read says what a new store holds and makes none."""
        found = self.read_store()
        if found is not None:
            return found
        if self._empty is None:
            self._empty = open_empty()
        return self._empty

    def close(self) -> None:
        for db in (self._database, self._reader, self._empty):
            if db is not None:
                db.close()
        self._database = self._reader = self._empty = None
        self._looked = False

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0

    def echo(self, message: str) -> None:
        """Print a normal result line (suppressed by -q)."""
        if not self.quiet:
            echo(message)

    def now(self) -> float:
        return time.time()


pass_app = click.make_pass_decorator(AppContext)


def _setup_logging(verbosity: int) -> None:
    """-q: errors only; by default warnings too; -v: progress; -vv: debug."""
    levels = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)
    log_lines_to_stderr(levels[max(-1, min(verbosity, 2)) + 1])


# Each command's module, imported when the command is first looked up: `syndicate build`
# then loads neither the web server nor the mail stack (a shorter start for cron runs).
COMMAND_MODULES = {
    "bounces": "commands_bounces",
    "build": "commands_build",
    "digest": "commands_digest",
    "inspect": "commands_inspect",
    "preflight": "commands_preflight",
    "send": "commands_send",
    "serve": "commands_serve",
    "store": "commands_store",
    "subscribers": "commands_subscribers",
    "unsubscribe-token": "commands_send",
}
# Each command's summary, the first paragraph of its docstring, for `syndicate --help`: it
# lists the commands without loading their modules (tests/test_cli.py holds it to them).
COMMAND_SUMMARIES = {
    "bounces": "Read bounces (DSN) and spam complaints (ARF) from Maildirs, mbox or .eml files.",
    "build": "Build feeds and article pages from the dumps (default: paths.seeds).",
    "digest": "Preview the digest `send` would mail now, as HTML and text files.",
    "inspect": "Show how each dump file parses, on its own (no duplicate removal).",
    "preflight": (
        "Check that mail from this setup will be accepted: SPF, DKIM, DMARC, SMTP, the message."
    ),
    "send": (
        "Build feeds and today's digest, and deliver it to every confirmed subscriber owed it."
    ),
    "serve": "Serve the feeds and pages, sign-up, confirm and one-click unsubscribe over HTTP.",
    "store": "Manage the store itself.",
    "subscribers": "Manage the mailing list: add, remove, list, import, export, erase, stats.",
    "unsubscribe-token": "Check or make the signed tokens of unsubscribe links.",
}


def _show_help(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """`--help`, printed through `echo` as every other line (click's own prints around it)."""
    if value and not ctx.resilient_parsing:
        echo(ctx.get_help())
        ctx.exit()


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        echo(f"syndicate, version {__version__}")
        ctx.exit()


def _help_through_echo(option: click.Option | None) -> click.Option | None:
    if option is not None:
        option.callback = _show_help
    return option


class Command(click.Command):
    """A command whose --help prints through `echo`."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        return _help_through_echo(super().get_help_option(ctx))


class Group(click.Group):
    """A group of commands (`subscribers`, `store`) whose --help prints through `echo`."""

    command_class = Command

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        return _help_through_echo(super().get_help_option(ctx))


class SyndicateGroup(click.Group):
    """A click group that is the one error boundary: SyndicateError -> one line + exit code.

    Its commands load lazily (COMMAND_MODULES); each module registers on `cli` on import.
    """

    command_class = Command
    group_class = Group

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        return _help_through_echo(super().get_help_option(ctx))

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except OutputError as exc:  # `syndicate --help` or `--version` could not be printed
            if not isinstance(exc, ReaderGoneError):
                echo(f"Error: {printable(str(exc))}", err=True)
            raise click.exceptions.Exit(exc.exit_code) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, with a command not loaded yet shown by its COMMAND_SUMMARIES line."""
        listed = click.Group(
            commands={
                name: self.commands.get(name) or click.Command(name, help=COMMAND_SUMMARIES[name])
                for name in self.list_commands(ctx)
            }
        )
        click.Group.format_commands(listed, ctx, formatter)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"{__name__}.{COMMAND_MODULES[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with interrupts.raising():
                check_open_files()  # before the command's module is even imported
                try:
                    return super().invoke(ctx)
                except OSError as exc:
                    if exc.errno not in (errno.EMFILE, errno.ENFILE):
                        raise
                    raise OutOfFilesError.from_os_error(exc) from exc
        except SyndicateError as exc:
            app = ctx.obj if isinstance(ctx.obj, AppContext) else None
            if app is not None and app.debug:
                raise
            if isinstance(exc, ReaderGoneError):  # as Unix tools end: quietly
                ctx.exit(exc.exit_code)
            # One line, as the log's: it may quote a stranger (a mail server's reply).
            echo(f"Error: {printable(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            echo("Interrupted.", err=True)
            ctx.exit(130)
        except Terminated:
            name = ctx.invoked_subcommand
            if name is None:
                # Stopped while starting, before any command ran: nothing to clean up or to
                # say, so it ends by the signal, as it did before this handler (an MTA's
                # pipe defers a command that dies by a signal, and returns one exiting 143).
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            echo(
                f"{name}: stopped by SIGTERM before it finished; nothing was half-written. "
                "Run it again to finish.",
                err=True,
            )
            ctx.exit(143)  # 128 + SIGTERM, as the shell reports a process the signal ended


# Open files (`ulimit -n`) below which no command is started: stdio, the store's file, its
# -wal and -shm (or its connection), a lock, the event loop's, a module or template being
# read, a few pipes. Below it a command failed wherever the next file was due, often as a
# traceback, or as a database "not usable" that was only not opened.
MIN_OPEN_FILES = 32


def check_open_files() -> None:
    """Raise OpenFilesError (exit 2) when this process may open fewer than MIN_OPEN_FILES
    files even after raising its soft limit toward the hard one (as `send` and `serve` raise
    it for their connections)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # not a POSIX system: no telling
        return
    if soft == resource.RLIM_INFINITY or soft >= MIN_OPEN_FILES:
        return
    try:
        from syndicate.send.transports import open_files_limit

        soft = open_files_limit(MIN_OPEN_FILES)
    except OSError:  # too few files left to import it: the limit stands
        pass
    if soft >= MIN_OPEN_FILES:
        return
    raise OpenFilesError(
        f"syndicate: this process may open {soft} files (ulimit -n), fewer than the "
        f"{MIN_OPEN_FILES} any command needs; nothing was done.",
        hint="Raise the limit (ulimit -n 1024, or LimitNOFILE= in a systemd unit).",
    )


@click.group(cls=SyndicateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: $SYNDICATE_CONFIG, else ./syndicate.toml if present).",
)
@click.option("-v", "--verbose", count=True, help="More detail on stderr (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors (for cron).")
@click.option("--debug", is_flag=True, help="Show a traceback for errors.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
@click.pass_context
def cli(
    ctx: click.Context, config_path: Path | None, verbose: int, quiet: bool, debug: bool
) -> None:
    """syndicate: article dumps in; feeds, pages and a daily digest out.

    Example: syndicate build
    """
    verbosity = -1 if quiet else verbose
    _setup_logging(verbosity)
    app = AppContext(config_path=config_path, verbosity=verbosity, debug=debug)
    ctx.obj = app
    ctx.call_on_close(app.close)


def _fill_closed_output() -> None:
    """Put /dev/null on standard output or error when the command started with it closed
    (`2>&-`, a wrapper that closes what it does not read).

    Python then has no sys.stderr, and the first look at it (a progress bar's isatty) ended
    the command; and the descriptor would go to the next file opened, into which anything
    written to fd 2 (a C library's warning) would then go. sys.stdout stays None, so
    `subscribers export -` still says it has nowhere to write.
    """
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:  # fd 0 was closed too, and is left so (`bounces -` says so)
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)


def main() -> None:
    """Console-script entry point."""
    _fill_closed_output()
    cli.main(prog_name="syndicate")


__all__ = ["AppContext", "Terminated", "cli", "echo", "main", "pass_app"]
