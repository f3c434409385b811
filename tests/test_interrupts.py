"""SIGTERM and Ctrl-C in a command: raised in the main thread, held back where an exception
would leave a lock taken (`syndicate.interrupts`).

A build stopped by SIGTERM once hung for ever: the signal's exception came inside the
thread pool's own lock code, the lock stayed taken, and the page writer's thread (then the
pool's `shutdown`) waited for it. The tests at the end deliver the signal at every function
entry of `threading`, `concurrent.futures` and `multiprocessing` that a page write or a
parallel build passes through, in a process of their own so a hang fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from syndicate import interrupts
from syndicate.interrupts import Terminated

ROOT = Path(__file__).resolve().parent.parent


def _inside(work: Callable[[], object]) -> None:
    """Run `work` while a command would run: with the handlers of `interrupts.raising`."""
    with interrupts.raising():
        work()


def test_a_sigterm_inside_a_held_section_is_raised_as_the_section_ends() -> None:
    reached: list[object] = []

    def work() -> None:
        with interrupts.held():
            signal.raise_signal(signal.SIGTERM)
            for n in range(1000):  # bytecodes, each a place the handler could raise
                reached.append(n)
            with interrupts.held():  # nested: only the outermost end raises
                pass
            reached.append("end of section")
        reached.append("after the section")  # pragma: no cover - never reached

    with pytest.raises(Terminated):
        _inside(work)
    assert reached[-1] == "end of section"
    assert len(reached) == 1001


def test_ctrl_c_inside_a_held_section_is_raised_as_the_section_ends() -> None:
    reached: list[str] = []

    def work() -> None:
        with interrupts.held():
            signal.raise_signal(signal.SIGINT)
            reached.append("end of section")
        reached.append("after the section")  # pragma: no cover - never reached

    with pytest.raises(KeyboardInterrupt):
        _inside(work)
    assert reached == ["end of section"]


def test_outside_a_section_a_signal_raises_at_once_and_sigterm_only_once() -> None:
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    seen: list[object] = []

    def work() -> None:
        try:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(5)  # pragma: no cover - cut short by the exception
        except Terminated:
            seen.append(signal.getsignal(signal.SIGTERM))
            signal.raise_signal(signal.SIGTERM)  # the clean-up is not cut short by a second
            seen.append("cleaned up")
        signal.raise_signal(signal.SIGINT)  # Ctrl-C still raises
        time.sleep(5)  # pragma: no cover

    with pytest.raises(KeyboardInterrupt):
        _inside(work)
    assert seen == [signal.SIG_IGN, "cleaned up"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_ctrl_c_ignored_when_the_command_starts_stays_ignored() -> None:
    # A shell starts a script's background job (`syndicate build &`) with SIGINT ignored,
    # and Python leaves it so: the terminal's Ctrl-C, meant for the job in the foreground,
    # stopped the build once its handler took SIGINT too.
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    reached: list[str] = []

    def work() -> None:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
        with interrupts.held():
            signal.raise_signal(signal.SIGINT)
        with interrupts.python_sigint():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        reached.append("done")

    try:
        _inside(work)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    assert reached == ["done"]


def test_a_section_held_by_another_thread_does_not_hold_the_main_threads_signal() -> None:
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with interrupts.held():
            inside.set()
            leave.wait(10)

    def work() -> None:
        signal.raise_signal(signal.SIGTERM)
        time.sleep(5)  # pragma: no cover

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert inside.wait(10)
        with pytest.raises(Terminated):
            _inside(work)
    finally:
        leave.set()
        thread.join(10)


def test_waiting_for_a_result_is_cut_short_between_two_slices() -> None:
    never: Future[int] = Future()
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))

    def work() -> None:
        timer.start()
        interrupts.result(never)

    started = time.monotonic()
    with pytest.raises(Terminated):
        _inside(work)
    timer.join()
    assert time.monotonic() - started < 5
    failed: Future[int] = Future()
    failed.set_exception(TimeoutError("the task's own"))
    with pytest.raises(TimeoutError, match="the task's own"):
        interrupts.result(failed)
    done: Future[int] = Future()
    done.set_result(7)
    assert interrupts.result(done) == 7


def test_a_result_that_comes_as_a_slice_times_out_is_returned() -> None:
    # The task finishes after a slice's wait timed out and before `result` looks whether it
    # is done: the worker's thread sets it at any moment. Its value, not the slice's
    # TimeoutError (which ended a build with a traceback, once in thousands of waits).
    late: Future[int] = Future()
    finished: list[bool] = []

    def finish_at_done(frame: Any, event: str, arg: object) -> None:
        if (
            event == "call"
            and frame.f_code is Future.done.__code__
            and frame.f_locals.get("self") is late
            and not finished
        ):
            finished.append(True)
            late.set_result(7)

    sys.setprofile(finish_at_done)
    try:
        value = interrupts.result(late)
    finally:
        sys.setprofile(None)
    assert finished
    assert value == 7


# Deliver SIGTERM or SIGINT from a trace function, at the Nth call of a function of these
# modules in the main thread: as Python runs a handler at a function's entry.
TRACER = r"""
import concurrent.futures, json, multiprocessing, os, signal, sys, threading
from syndicate import interrupts

LIBS = tuple(
    os.path.dirname(module.__file__) if module.__file__.endswith("__init__.py") else module.__file__
    for module in (threading, concurrent.futures, multiprocessing)
)
PARENT = os.getpid()


class At:
    def __init__(self, target, signum):
        self.target, self.signum, self.calls = target, signum, 0

    def __call__(self, frame, event, arg):
        if event == "call" and os.getpid() == PARENT and frame.f_code.co_filename.startswith(LIBS):
            self.calls += 1
            if self.calls == self.target:
                signal.getsignal(self.signum)(self.signum, frame)
        return None


def run(target, signum, work, cleanup):
    at = At(target, signum)
    outcome = "finished"
    try:
        with interrupts.raising():
            sys.settrace(at)
            try:
                work()
            finally:
                sys.settrace(None)
                cleanup()
    except interrupts.Terminated:
        outcome = "SIGTERM"
    except KeyboardInterrupt:
        outcome = "SIGINT"
    except BaseException as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    children = len(multiprocessing.active_children())
    print(json.dumps([target, at.calls, outcome, alive, children]), flush=True)
"""

WRITER = (
    TRACER
    + r"""
import faulthandler, tempfile
from pathlib import Path
from syndicate.publish.writer import PageWriter

faulthandler.dump_traceback_later(30, exit=True)  # a hang ends the process, and says where
out = Path(sys.argv[1])
for target in range(1, int(sys.argv[2])):
    writer = PageWriter(out, {})
    def work():
        for n in range(3):
            writer.write(f"p{n}.html", b"<p>trang</p>", "f", fsync=False)
        writer.drain()
    run(target, signal.SIGTERM if target % 2 else signal.SIGINT, work, writer.abandon)
"""
)

BUILD = (
    TRACER
    + r"""
import faulthandler, shutil
from datetime import datetime, timezone
from pathlib import Path
from syndicate.config import load_settings
from syndicate.publish import run_build
from syndicate.publish.pool import BuildTuning
from syndicate.store import open_database

faulthandler.dump_traceback_later(60, exit=True)
root = Path(sys.argv[1])
settings = load_settings(None, {}, cwd=root)
now = datetime(2024, 11, 1, tzinfo=timezone.utc)
every = BuildTuning(parallel_min=1)  # the dumps and pages go to worker processes


def build():
    db = open_database(settings.paths.database)
    try:
        run_build(settings, db, now=now, tuning=every)
    finally:
        db.close()


for target in map(int, sys.argv[2].split(",")):
    shutil.rmtree(settings.paths.output, ignore_errors=True)
    for stale in root.glob("syndicate.db*"):
        stale.unlink()
    run(target, signal.SIGTERM if target % 2 else signal.SIGINT, build, lambda: None)
    left = [
        path.name
        for path in settings.paths.output.rglob("*")
        if path.suffix == ".tmp" or path.name == ".staging"
    ]
    print(json.dumps(left), flush=True)
build()
print(json.dumps(sorted(p.name for p in (settings.paths.output / "articles").glob("*.html"))))
"""
)


def _run(script: str, *args: str) -> list[Any]:
    """The JSON lines `script` prints; it fails the test when it hangs (its processes are
    killed, workers too) or exits with an error."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own group: a hung one goes with its workers
    ) as process:
        try:
            out, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # pragma: no cover - the failure looked for
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            pytest.fail(f"the process hung: {err[-3000:]}")
    assert process.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines()]


def test_a_signal_at_any_point_of_a_page_write_ends_it_and_stops_the_writer(
    tmp_path: Path,
) -> None:
    lines = _run(WRITER, str(tmp_path), "120")
    fired = [line for line in lines if line[2] != "finished"]
    # Each call into the pool's code, to the last: the signal came inside the work.
    assert len(fired) >= 40
    for target, calls, outcome, alive, _children in lines:
        expected = "finished" if calls < target else ("SIGTERM" if target % 2 else "SIGINT")
        assert outcome == expected, (target, calls)
        assert alive == [], (target, outcome)  # the writer thread is gone
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow(seconds=10)
def test_a_signal_at_any_point_of_a_parallel_build_ends_it_and_leaves_no_worker(
    workdir: Path,
) -> None:
    seeds = workdir / "seeds"
    for n in range(24):
        body = "\n".join(f"Đoạn {p} của tin số {n}: người dân đón tin vui." for p in range(8))
        (seeds / f"{n:05d}.txt").write_text(
            f"Tin số {n} về mùa màng\n{1 + n % 28:02d}/10/2024 09:{n % 60:02d}\n"
            f"QTO - Tóm tắt tin số {n}.\n{body}\n",
            encoding="utf-8",
        )
    # One call in seven through the whole build (about 290 calls), SIGTERM and SIGINT in turn.
    targets = range(1, 300, 7)
    lines = _run(BUILD, str(workdir), ",".join(map(str, targets)))
    runs, pages = lines[:-1], lines[-1]
    fired = 0
    for (target, calls, outcome, alive, children), left in zip(runs[::2], runs[1::2], strict=True):
        if calls < target:
            assert outcome == "finished"
            continue
        fired += 1
        assert outcome == ("SIGTERM" if target % 2 else "SIGINT"), (target, outcome)
        assert (alive, children) == ([], 0), (target, outcome)  # no thread, no worker left
        assert left == [], (target, outcome)  # no temp file, no staging folder
    assert fired >= 35
    assert len(pages) == 24  # and a build left alone writes every page


def test_an_event_loop_takes_ctrl_c_as_asyncio_means_it_and_gives_it_back() -> None:
    """Inside a command, `send` and `preflight` run their event loop with asyncio's own Ctrl-C
    handler (it cancels the task at its next await, rather than raising wherever the loop
    is); ours is back after."""
    from syndicate.send.transports import run_event_loop

    cancelled: list[str] = []

    async def interrupted() -> None:
        signal.raise_signal(signal.SIGINT)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append("at its await")
            raise

    def work() -> None:
        mine = signal.getsignal(signal.SIGINT)
        try:
            run_event_loop(interrupted)
        finally:
            assert signal.getsignal(signal.SIGINT) is mine

    with pytest.raises(KeyboardInterrupt):
        _inside(work)
    assert cancelled == ["at its await"]
