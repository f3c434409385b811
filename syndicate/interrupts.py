"""SIGTERM and Ctrl-C while a command runs: exceptions in the main thread, held back where
an exception would leave a lock taken.

Python runs a signal handler in the main thread between two bytecodes, wherever that thread
is. An exception raised there inside the pure-Python lock code of `threading` and
`concurrent.futures` (a `Condition.__enter__` that has taken its lock, an `__exit__` that has
not yet let it go) leaves the lock taken for ever: the next thread to want it waits for
ever, and so does the `shutdown(wait=True)` that waits for that thread. A build stopped by
SIGTERM hung so. `held()` marks such a section: a SIGTERM or SIGINT that comes inside it
is raised as the section ends. Sections are short (a task handed to a thread or a process,
a result taken back, a pool stopped); `result()` waits in short held slices, so a signal
waits at most `POLL` seconds.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Future
    from types import FrameType, TracebackType

_T = TypeVar("_T")

# Longest a signal waits while a result is waited for (seconds).
POLL = 0.05

_MAIN = threading.main_thread().ident


class Terminated(BaseException):
    """SIGTERM, raised where the command is, as Ctrl-C raises KeyboardInterrupt.

    A BaseException for the same reason: a stage's `except Exception` (one odd dump, one
    recipient) must not take it for a fault of its own. On the way out the `with` and
    `finally` blocks do what they do for Ctrl-C: temp files and the staging folder go,
    an open transaction rolls back.
    """


class _State:
    """Which process the handlers raise in, how deep the held sections go, and the signals
    that came inside them (each once, in order)."""

    pid: int | None = None
    depth = 0
    came: list[int] = []  # noqa: RUF012 - one list, this module's own


def _raise(signum: int) -> None:
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up runs to its end
        raise Terminated
    raise KeyboardInterrupt


def _handler(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _State.pid:  # a forked worker: as Python's own handlers do
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt
    if _State.depth:
        if signum not in _State.came:
            _State.came.append(signum)
        return
    _raise(signum)


@contextmanager
def raising() -> Iterator[None]:
    """While a command runs, SIGTERM raises Terminated (once: it is ignored after) and
    SIGINT KeyboardInterrupt in this process's main thread, outside `held()` sections.

    A process forked from this one (the build's workers) ends by SIGTERM and raises
    KeyboardInterrupt on SIGINT, as before. Elsewhere than the main thread (a test's server
    thread) Python sets no handler: nothing changes. A SIGINT ignored when the command
    starts stays ignored. The handlers found are put back after.
    """
    if threading.get_ident() != _MAIN:
        yield
        return
    _State.pid, _State.depth, _State.came = os.getpid(), 0, []
    before_term = signal.signal(signal.SIGTERM, _handler)
    # Ctrl-C the parent ignores (a script's background job, `syndicate build &`) stays
    # ignored, as Python leaves it: the terminal's Ctrl-C is for the job in the foreground.
    take_int = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    before_int = signal.signal(signal.SIGINT, _handler) if take_int else None
    try:
        yield
    finally:
        # None: a handler not set from Python, which cannot be put back from it.
        if take_int:
            signal.signal(
                signal.SIGINT, signal.default_int_handler if before_int is None else before_int
            )
        signal.signal(signal.SIGTERM, signal.SIG_DFL if before_term is None else before_term)
        _State.pid = None


@contextmanager
def python_sigint() -> Iterator[None]:
    """Ctrl-C taken by Python's own handler meanwhile, for code that looks for that handler:
    `asyncio.Runner` then puts its own in place, which cancels the running task at its
    next `await` rather than raising wherever the loop is. Ours is back after."""
    if threading.get_ident() != _MAIN or signal.getsignal(signal.SIGINT) is not _handler:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, _handler)


class _Held:
    """The context manager `held()` returns: one object, entered again and again (a page
    write enters it twice, so it costs no more than a counter)."""

    __slots__ = ()

    def __enter__(self) -> None:
        if threading.get_ident() == _MAIN:
            _State.depth += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if threading.get_ident() != _MAIN:
            return
        _State.depth -= 1
        if not _State.depth and _State.came:
            signum = _State.came[0]
            _State.came = []
            if _State.pid == os.getpid():
                _raise(signum)


_HELD = _Held()


def held() -> _Held:
    """A section that SIGTERM and SIGINT wait for (see the module's text); it nests. Outside
    the main thread, or where `raising()` is not in force, it holds nothing back."""
    return _HELD


def result(future: Future[_T]) -> _T:
    """`future.result()`, waited for in held slices of at most `POLL` seconds, so a signal
    is raised here between two slices and never inside the future's lock."""
    while True:
        with _HELD:
            try:
                return future.result(timeout=POLL)
            except TimeoutError:
                if not future.done():
                    continue
            # Done: the task's own TimeoutError, or a task that finished after the slice's
            # wait timed out (another thread sets it at any moment): its value or exception.
            return future.result()
