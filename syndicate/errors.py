"""Errors: every expected failure, with where / what / what to do and an exit code."""

from __future__ import annotations

import errno
import logging
import sys
from typing import ClassVar

EXIT_OK = 0
EXIT_FAILED = 1  # the job ran but something failed (or was skipped under --strict)
EXIT_USAGE = 2  # bad invocation, bad config or unusable input
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: locked or busy, disk full, or the mail server unavailable
EXIT_PIPE = 141  # 128 + SIGPIPE: what a shell shows for a tool a closed pipe ended (`| head`)


class SyndicateError(Exception):
    """Base of every error syndicate expects; `cli` turns it into one line and an exit code."""

    exit_code: ClassVar[int] = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} {self.hint}"
        return self.message


class ConfigError(SyndicateError, ValueError):
    """The config file or environment holds a bad key or value."""

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key = key


class DumpError(SyndicateError, ValueError):
    """One dump file cannot be turned into an article; the batch goes on without it."""

    def __init__(
        self,
        path: str,
        reason: str,
        *,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = f"{path} line {line}" if line is not None else path
        super().__init__(f"{where}: {reason}", hint=hint)
        self.path = path
        self.line = line
        self.reason = reason


class InputError(SyndicateError):
    """A path or argument given on the command line cannot be used."""


class OutputError(SyndicateError, OSError):
    """A file could not be written."""


class DiskFullError(OutputError):
    """A file could not be written because the disk is full (or over quota); try again later."""

    exit_code: ClassVar[int] = EXIT_TEMPFAIL


class ReaderGoneError(OutputError):
    """Standard output is a pipe whose reader has gone (`| head -1`). The command ends
    quietly, as Unix tools do, with the exit status a shell shows for one that SIGPIPE
    ended; what it did before it printed is whole."""

    exit_code: ClassVar[int] = EXIT_PIPE


class OutboxUnreadableError(SyndicateError):
    """`subscribers erase` could not read part of the outbox folder: mails to the erased
    address may remain there. The store's part is done; running erase again finishes."""

    exit_code: ClassVar[int] = EXIT_FAILED


class OpenFilesError(SyndicateError):
    """The process may open too few files (`ulimit -n`) for any command: a setup problem of
    the machine or the service unit that no retry fixes, exit 2 as for a bad config."""


class OutOfFilesError(OpenFilesError):
    """A command ran out of open files (`ulimit -n`, or the system's table) midway; what it
    had written is whole, and a later run may have the files."""

    exit_code: ClassVar[int] = EXIT_TEMPFAIL

    @classmethod
    def from_os_error(cls, exc: OSError) -> OutOfFilesError:
        """The error for an EMFILE or ENFILE raised wherever a command was."""
        try:
            import resource

            limit = f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]} (ulimit -n)"
        except (ImportError, OSError, ValueError):
            limit = "its limit"
        what = (
            "the system's open-files table is full"
            if exc.errno == errno.ENFILE
            else (f"this process reached its open-files limit, {limit}")
        )
        where = f" opening {exc.filename}" if exc.filename else ""
        return cls(
            f"syndicate: {what}{where}; what was written so far is whole.",
            hint="Raise the limit (ulimit -n, or LimitNOFILE= in a systemd unit), "
            "then run the command again.",
        )


class WorkerError(SyndicateError):
    """A build worker process died (killed for lack of memory, say); the build stopped."""

    exit_code: ClassVar[int] = EXIT_FAILED


class StoreError(SyndicateError):
    """The store (SQLite file or PostgreSQL database) cannot be opened, migrated or written."""


class StoreBusyError(StoreError):
    """Another process held the database's write lock past the busy timeout; try again later."""

    exit_code: ClassVar[int] = EXIT_TEMPFAIL

    def __init__(self, path: str, reason: str | None = None) -> None:
        reason = reason or "another syndicate command is writing"
        super().__init__(f"{path}: the database is busy ({reason}). Try again in a moment.")
        self.path = path


class StoreUpgradeError(StoreError):
    """A schema upgrade that did not finish in time (a lock another session held, a step
    past store.reply_timeout); its step was rolled back: try again later."""

    exit_code: ClassVar[int] = EXIT_TEMPFAIL


class StoreFullError(StoreError):
    """The disk holding the database is full; try again once there is room."""

    exit_code: ClassVar[int] = EXIT_TEMPFAIL

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path}: the disk is full, so the database cannot grow. "
            "Free some space, then try again."
        )
        self.path = path


class StoreUnavailableError(StoreError):
    """The database server cannot be reached (down, restarting, refused); try again later."""

    exit_code: ClassVar[int] = EXIT_TEMPFAIL


class StoreAccessError(StoreError):
    """The database server refused the login (wrong password, no such role or database, no
    right to connect): a setup problem that no retry fixes, exit 2 as for a bad config."""

    exit_code: ClassVar[int] = EXIT_USAGE


class LockedError(SyndicateError):
    """Another run holds the lock; try again later."""

    exit_code: ClassVar[int] = EXIT_TEMPFAIL


class ClockError(SyndicateError):
    """This machine's day is before a day the store has a digest of: its clock went back."""

    exit_code: ClassVar[int] = EXIT_TEMPFAIL


class SendError(SyndicateError):
    """Sending mail failed: the subclasses say whether for one recipient, for now, or for good.

    `cause`, on an error that stopped a run: what stopped it, without how far the run got
    (which the message goes on to say): what `send --workers` reports of a worker stopped
    while the others sent everyone.
    """

    cause: str | None = None


class DeliveryError(SendError):
    """The mail server refused the whole run (a setup problem, not one bad address)."""


class TempFailError(SendError):
    """The mail server stayed unavailable after retries; try again later."""

    exit_code: ClassVar[int] = EXIT_TEMPFAIL


class RecipientRefusedError(SendError):
    """The server refused one recipient for good (5xx): recorded, never retried, a bounce.

    `stage` is how far the SMTP session got (a `send.policy.Stage` value), `code`
    and `reply` the server's answer. The run goes on without this recipient.
    """

    exit_code: ClassVar[int] = EXIT_FAILED

    def __init__(self, recipient: str, *, stage: str, code: int, reply: str) -> None:
        super().__init__(f"{recipient}: the server refused the message: {reply}")
        self.recipient = recipient
        self.stage = stage
        self.code = code
        self.reply = reply
        self.in_flight = False


class TransientSendError(SendError):
    """A temporary failure (4xx, dropped connection, timeout): worth retrying.

    `in_flight` is True when the message body had been sent: it may have been accepted.
    """

    exit_code: ClassVar[int] = EXIT_TEMPFAIL

    def __init__(
        self, message: str, *, stage: str, code: int, reply: str, in_flight: bool = False
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.code = code
        self.reply = reply
        self.in_flight = in_flight

    @property
    def connection(self) -> bool:
        """The session could not be opened: the server, not one recipient, is the problem."""
        return self.stage == "session"


class TokenError(SyndicateError, ValueError):
    """A confirm or unsubscribe token is malformed, altered or expired."""


class StaleTokenError(TokenError):
    """A well-signed token whose subscriber is gone (erased): it may act on nobody."""


class ExpiredTokenError(TokenError):
    """A well-signed token older than it may be (a confirm link past its hours)."""


class SubscriberError(SyndicateError, ValueError):
    """A subscriber operation got a bad address or an unknown subscriber."""


class InterruptError(SyndicateError):
    """A run stopped by SIGINT (Ctrl-C): started messages finished and were recorded."""

    exit_code: ClassVar[int] = 130  # 128 + SIGINT


class TerminatedError(InterruptError):
    """A run stopped by SIGTERM: started messages finished and were recorded."""

    exit_code: ClassVar[int] = 143  # 128 + SIGTERM


class CrashedStopError(InterruptError):
    """A `send --workers` run stopped by SIGINT or SIGTERM in which a worker also crashed (a
    bug in syndicate): exit 1, what any crash exits with, so that a cron wrapper or a
    systemd unit tells it from a clean stop (130, 143). Its line is the interrupt line."""

    exit_code: ClassVar[int] = EXIT_FAILED


# Control characters (C0 but the tab, DEL, C1) and Unicode's line separators, as escapes:
# a record may carry text from a stranger (a bounce's header, a file name in a Maildir),
# which raw would drive the terminal (an escape sequence) or print a line of its own.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x09}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})
# Unicode's bidirectional controls are not control characters, but drive the terminal all
# the same: RLO (U+202E) shows the rest of the line reversed, an isolate reorders what
# follows it ("Trojan Source", CVE-2021-42574).
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_ESCAPES.update({c: f"\\u{c:04x}" for c in _BIDI})


def printable(text: str) -> str:
    """Return `text` with its control characters, line separators and bidirectional controls
    as escapes (`\\x1b`, `\\n`, `\\u202e`): one line that cannot drive a terminal.

    Here, not in text.py: every command loads this module first, and text.py costs ~10 ms.
    """
    return text.translate(_ESCAPES)


class _LineFormatter(logging.Formatter):
    """One line a record: "error: ...", "warning: ...", or the message alone (printable)."""

    def format(self, record: logging.LogRecord) -> str:
        message = printable(record.getMessage())
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:  # `log.exception`: what was raised, on the same line
            message += f" ({printable(f'{type(error).__name__}: {error}')})"
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


def log_lines_to_stderr(level: int) -> None:
    """Send the `syndicate` logger's records of `level` and above to stderr, one line each.

    The CLI's shape, set by the CLI and by each `send --workers` worker, so that a worker's
    warnings read like its parent's.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter())
    root = logging.getLogger("syndicate")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(level)


class CrashedRunError(SyndicateError):
    """A `send --workers` run that ended on another error (a store error, exit 75; the mail
    server unavailable, 75, or refusing the setup, 2) in which a worker also crashed (a bug
    in syndicate): exit 1, what any crash exits with, so that a cron wrapper retrying on 75
    does not retry a bug. Its line is that error's."""

    exit_code: ClassVar[int] = EXIT_FAILED
