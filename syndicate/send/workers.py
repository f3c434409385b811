"""Send: `send --workers N`, the daily job's sending spread over N processes sharing the ledger.

The parent (holding the send lock) has made every digest's messages once; it
starts N worker processes, hands each its job (pickled, on stdin) and the
lock's descriptor, forwards SIGINT and SIGTERM to them (and stops them all
when one was stopped by a signal sent to it alone), and gathers what they
report (pickled, on stdout); the run's counts are the ledger's (`send.daily`), so
what a worker killed before it reported had sent is counted too. Each worker is a
`DigestSender` with a lease owner of its own, its own SMTP connections
(`smtp.connections` each) and its share of `smtp.rate`; they divide the
recipients through the ledger's claims. A worker that crashes (a bug) writes its
traceback to stderr and says so in its report.
The workers run in a process group of their own: a terminal's Ctrl-C reaches
the parent only, which passes it on once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import faulthandler
import gc
import logging
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from syndicate.config import Settings
from syndicate.errors import OutOfFilesError, SendError, SyndicateError, log_lines_to_stderr
from syndicate.mail import MessageTemplate
from syndicate.send.deliver import DigestSender, SendSummary, Stop, make_run_id, make_worker_id
from syndicate.send.policy import SendPolicy
from syndicate.send.transports import (
    OTHER_OPEN_FILES,
    fit_open_files,
    open_files_limit,
    open_mailer,
    run_event_loop,
)
from syndicate.store import open_database

log = logging.getLogger("syndicate.send")

# Open files the parent keeps for each worker: its stdin and stdout pipes, and one while it
# starts (the pipe that reports a failed exec).
_PIPES_PER_WORKER = 3

# What a worker process runs: `main` below, imported by its module name so that what it
# pickles back names this module's classes. SIGINT and SIGTERM are caught from the first
# line, so a signal the parent forwards while the worker is still starting up is kept (and
# acted on once the send loop's handlers are in place), not a KeyboardInterrupt mid-import.
# Before that line they are blocked (the parent starts the worker with them blocked), and
# one that came meanwhile is kept too: Python's start-up before it, tens of milliseconds,
# was killed by either (a Ctrl-C as the workers started, a `kill PID`), with no report.
# It runs under `python -P` (see _run) and is given, as its argument, the folder the parent
# found syndicate in: the package is loaded from there, and from nowhere else (another
# version installed, or a checkout run without being installed), while the module path
# stays as it was (that folder first could shadow the standard library: site-packages).
_ENTRY = (
    "import signal\n"
    "pending = []\n"
    "for signum in (signal.SIGINT, signal.SIGTERM):\n"
    "    signal.signal(signum, lambda number, frame: pending.append(number))\n"
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))\n"
    "import sys\n"
    "from importlib.machinery import PathFinder\n"
    "from importlib.util import module_from_spec\n"
    "spec = PathFinder.find_spec('syndicate', [sys.argv[1]])\n"
    "if spec is not None and spec.loader is not None:\n"
    "    sys.modules['syndicate'] = package = module_from_spec(spec)\n"
    "    spec.loader.exec_module(package)\n"
    "from syndicate.send.workers import main\n"
    "main(pending)\n"
)
# The folder holding the `syndicate` package this process runs.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_STOPS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class DayJob:
    """One digest the workers send: made once by the parent, in the order they send them."""

    day: date
    confirmed_by: datetime | None  # an earlier day's digest: its creation time
    templates: Mapping[str, MessageTemplate]
    skipped: int  # already sent or out of attempts when the run began (counted once, here)


@dataclass(frozen=True, slots=True)
class WorkerJob:
    """Everything one worker process needs, handed over on its stdin."""

    settings: Settings
    secret: bytes
    now: datetime
    worker: str  # its lease owner: '<run>/<n>'
    workers: int  # how many share the run (each gets its share of smtp.rate)
    days: tuple[DayJob, ...]
    limit: int | None  # its share of --limit
    log_level: int


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """What one worker did, handed back on its stdout: a summary per digest it got to."""

    summaries: tuple[SendSummary, ...]
    # Each digest's send: start, end on the monotonic clock (one for every process of the
    # machine, and never stepped: the wall clock, stepped by NTP mid-run, made the summary's
    # seconds an hour off).
    spans: tuple[tuple[float, float], ...] = ()
    signal: int | None = None
    error: SyndicateError | None = None
    # A bug: the exception that ended the worker, in one line ('ZeroDivisionError: division
    # by zero'); its traceback went to stderr.
    crash: str | None = None


@dataclass(frozen=True, slots=True)
class WorkersOutcome:
    """What the workers of run `run` (lease owners '<run>/<n>') reported: a summary per digest
    they got to (summed: the ledger has the run's counts, `send.daily`), the dead and
    crashed workers, the send errors that stopped a worker (by worker number), and the
    signal that stopped the run or the first other error a worker reported (a store error).
    Whether a lost or stopped worker stops the run is the ledger's to say (`send.daily`), as
    the other workers may have sent everyone meanwhile. `seconds`: from the first worker's
    start to the last one's end."""

    run: str
    summaries: tuple[SendSummary, ...]
    lost: tuple[LostWorker, ...] = ()
    stopped_by: tuple[tuple[int, SendError], ...] = ()
    signal: int | None = None
    error: SyndicateError | None = None
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class LostWorker:
    """A worker that died before it finished: its number, pid, and how it ended ('was killed
    by SIGKILL', 'crashed (ZeroDivisionError: division by zero)'). `crash`: a bug in
    syndicate (a Python exception, or a fault such as SIGSEGV), not a kill; its traceback
    went to stderr. What that means for the run is the ledger's to say (`send.daily`): the
    others may have taken over its recipients and sent them."""

    number: int
    pid: int
    how: str
    crash: bool = False


# The signals a process gets from its own fault (a bug in syndicate or in a library it
# loads), not from someone stopping it: a worker they end crashed. faulthandler writes its
# Python traceback to stderr.
_FAULTS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT})


def run_workers(
    settings: Settings,
    *,
    days: list[DayJob],
    secret: bytes,
    now: datetime,
    workers: int,
    limit: int | None,
    lock_fd: int,
    run: str | None = None,
    first: int = 1,
) -> WorkersOutcome:
    """Send `days` through `workers` processes; return what they reported.

    `run`: the run these workers belong to (a new one when None), numbered from `first`: a
    later round of the same run (`send.daily`) takes no row the run gave up on.

    Returns once every worker has ended. The signal that stopped the run (SIGINT,
    SIGTERM: this process's, or one a worker alone got) is in `signal`; the
    first error other than a send error a worker reported (a store error) in
    `error`; the send errors (DeliveryError, TempFailError: the server would
    not take this worker's mail) in `stopped_by`. A worker that died (SIGKILL,
    a crash) is listed in `lost`: the others take over what it held (at once
    what a crashed worker gave back, else once its lease runs out).
    `send.daily` says what all that means.
    """
    return run_event_loop(
        lambda: _run(
            settings,
            days=days,
            secret=secret,
            now=now,
            workers=workers,
            limit=limit,
            lock_fd=lock_fd,
            run=run or make_run_id(),
            first=first,
        )
    )


async def _run(
    settings: Settings,
    *,
    days: list[DayJob],
    secret: bytes,
    now: datetime,
    workers: int,
    limit: int | None,
    lock_fd: int,
    run: str,
    first: int,
) -> WorkersOutcome:
    level = logging.getLogger("syndicate").getEffectiveLevel()
    shares = _shares(limit, workers)
    procs: list[asyncio.subprocess.Process] = []
    jobs: list[bytes] = []
    stopped: list[int] = []  # the signal that stops the run: this process's, or a worker's
    received: list[int] = []  # the signals this process got
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if received and received[0] == signal.SIGINT and signum == signal.SIGINT:
            log.error(
                "interrupted again: quitting at once; messages in flight are not recorded "
                "(the next run sends them again)."
            )
            signal_workers(procs, signal.SIGKILL)  # each worker quits at once too
            logging.shutdown()
            os._exit(128 + signum)
        running = sum(1 for proc in procs if proc.returncode is None)
        log.warning(
            "stopping (%s): no new messages; waiting for %s messages in flight%s.",
            signal.Signals(signum).name,
            "the worker's" if running == 1 else f"the {running} workers'",
            " (Ctrl-C again to quit at once)" if signum == signal.SIGINT else "",
        )
        received.append(signum)
        if not stopped:
            stopped.append(signum)
            signal_workers(procs, signum)
        # Else the workers were told to stop already (a signal to one of them alone): once
        # more, a SIGINT would make each quit at once, not this process's second Ctrl-C.

    def on_worker_signal(number: int, pid: int, signum: int) -> None:
        # A worker stopped by a signal sent to it alone (`kill PID`): the run stops as if this
        # process had got it. A signal sent to every process of the run at once (systemd's
        # KillMode=control-group) reached this one too, and stopped the run already.
        if stopped:
            return
        log.warning(
            "send worker %d (pid %d) was stopped by %s: stopping the run: no new messages; "
            "waiting for the other workers' messages in flight.",
            number,
            pid,
            signal.Signals(signum).name,
        )
        stopped.append(signum)
        signal_workers(procs, signum)

    async def talk(number: int, proc: asyncio.subprocess.Process, job: bytes) -> bytes:
        out, _err = await proc.communicate(job)
        signum = _stop_signal(_read_result(out), proc.returncode)
        if signum is not None:
            on_worker_signal(number, proc.pid, signum)
        return out

    for signum in _STOPS:
        loop.add_signal_handler(signum, on_signal, signum)
    started = time.monotonic()
    try:
        for number in range(first, first + workers):
            job = WorkerJob(
                settings=settings,
                secret=secret,
                now=now,
                worker=make_worker_id(run, number),
                workers=workers,
                days=tuple(days),
                limit=shares[number - first],
                log_level=level,
            )
            # The worker starts with SIGINT and SIGTERM blocked, until it catches them (_ENTRY);
            # one that comes here meanwhile is acted on once it is in `procs`.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    # -P: `python -c` puts the current folder first on the module path, so a
                    # `signal.py` left there by another user who may write in it (a shared
                    # folder, /tmp) ran in the worker, which is handed the signing secret.
                    "-P",
                    "-c",
                    _ENTRY,
                    _PACKAGE_ROOT,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    # The send lock stays held while any worker lives (none on PostgreSQL).
                    pass_fds=(lock_fd,) if lock_fd >= 0 else (),
                    process_group=0,  # the terminal's Ctrl-C goes to the parent only
                )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            procs.append(proc)
            jobs.append(pickle.dumps(job))
            if stopped:  # a signal came while it was starting: the others have it already
                signal_workers([proc], stopped[0])
        talks = [
            talk(number, proc, job)
            for number, (proc, job) in enumerate(zip(procs, jobs, strict=True), start=first)
        ]
        outputs = await asyncio.gather(*talks)
    finally:
        for signum in _STOPS:
            loop.remove_signal_handler(signum)
    seconds = time.monotonic() - started
    results: list[WorkerResult] = []
    numbers: list[int] = []
    lost: list[LostWorker] = []
    for number, (proc, out) in enumerate(zip(procs, outputs, strict=True), start=first):
        result = _read_result(out)
        if result is None:
            if _stop_signal(None, proc.returncode) is None:  # else stopped, holding nothing
                lost.append(_lost(number, proc.pid, proc.returncode or 0))
            continue
        if result.crash is not None:  # what it did before is in its summaries
            lost.append(LostWorker(number, proc.pid, f"crashed ({result.crash})", crash=True))
        results.append(result)
        numbers.append(number)
    stopped_by: list[tuple[int, SendError]] = []
    error: SyndicateError | None = None
    for number, result in zip(numbers, results, strict=True):
        if isinstance(result.error, SendError):
            stopped_by.append((number, result.error))
        elif result.error is not None and error is None:
            error = result.error
    return WorkersOutcome(
        run=run,
        summaries=tuple(_merge(days, results)),
        lost=tuple(lost),
        stopped_by=tuple(stopped_by),
        signal=stopped[0] if stopped else None,
        error=error,
        seconds=seconds,
    )


def _stop_signal(result: WorkerResult | None, code: int | None) -> int | None:
    """The signal (SIGINT, SIGTERM) that stopped a worker: in its report; else in its exit
    status, killed by it outside its send loop (a thread of its ending took it as the loop's
    handlers went), where it holds no recipient."""
    if result is not None and result.signal is not None:
        return result.signal
    if code is not None and -code in _STOPS:
        return -code
    return None


def _lost(number: int, pid: int, code: int) -> LostWorker:
    """A worker that ended with no report, by its exit status: killed by a signal, or
    crashed (exit 1: Python's for an uncaught exception, its traceback on stderr; or a fault
    signal)."""
    if code < 0:
        name = signal.Signals(-code).name
        if -code in _FAULTS:
            return LostWorker(number, pid, f"crashed (killed by {name})", crash=True)
        return LostWorker(number, pid, f"was killed by {name}")
    if code == 1:
        return LostWorker(number, pid, "crashed (exited 1)", crash=True)
    return LostWorker(number, pid, f"exited {code}")


def fit_workers(workers: int) -> int:
    """As many of `workers` as this process may keep the pipes of (`ulimit -n`, first raised
    toward the hard limit if need be); fewer, said once, when even the hard limit is too low,
    rather than fail with EMFILE halfway through starting them."""
    need = OTHER_OPEN_FILES + _PIPES_PER_WORKER * workers
    limit = open_files_limit(need)
    if need <= limit:
        return workers
    fit = max(1, (limit - OTHER_OPEN_FILES) // _PIPES_PER_WORKER)
    log.warning(
        "send --workers %d needs about %d open files in this process (its pipes to each "
        "worker), and it may open %d (ulimit -n): sending with %d %s. Raise the limit "
        "(ulimit -n, or LimitNOFILE= in a systemd unit) or lower --workers.",
        workers,
        need,
        limit,
        fit,
        "worker" if fit == 1 else "workers",
    )
    return fit


def _shares(limit: int | None, workers: int) -> list[int | None]:
    """Each worker's share of --limit: as even as whole numbers allow."""
    if limit is None:
        return [None] * workers
    return [limit // workers + (1 if n < limit % workers else 0) for n in range(workers)]


def signal_workers(procs: list[asyncio.subprocess.Process], signum: int) -> None:
    """Send `signum` to each worker still running, leaving its exit status to asyncio.

    With `os.kill`, not `proc.send_signal`: Python 3.11's `Popen.send_signal` polls the
    child first, and so reaps one that has just died before asyncio's child watcher does;
    the watcher then reports it as 255, and the run named a killed worker "exited 255".
    """
    for proc in procs:
        if proc.returncode is None and _running(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)


def _running(pid: int) -> bool:
    """Whether our child `pid` has not ended, asked without reaping it (WNOWAIT).

    False too once asyncio's child watcher has reaped it, though its `returncode` is set
    only later, by a callback on the loop (a signal handler may run first): its pid is
    then free, and the next process started anywhere on the machine may be given it, since
    the kernel's pid counter has been moving on since the worker started.
    """
    if not hasattr(os, "waitid"):  # macOS before Python 3.13: no asking without reaping
        return True
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # reaped: no longer our child
        return False


def _read_result(out: bytes) -> WorkerResult | None:
    if not out:
        return None
    try:
        result = pickle.loads(out)  # noqa: S301 - our own child's answer, over a private pipe
    except Exception:  # a worker cut off mid-answer
        return None
    return result if isinstance(result, WorkerResult) else None


def _merge(days: list[DayJob], results: list[WorkerResult]) -> list[SendSummary]:
    """One summary per digest that some worker got to: counts summed; the time from the first
    worker's start to the last one's end (not the workers' start-up)."""
    merged: list[SendSummary] = []
    for index, job in enumerate(days):
        parts = [r.summaries[index] for r in results if len(r.summaries) > index]
        spans = [r.spans[index] for r in results if len(r.spans) > index]
        if not parts:
            break
        seconds = max(p.seconds for p in parts)
        if spans:
            seconds = max(seconds, max(end for _s, end in spans) - min(s for s, _e in spans))
        merged.append(
            SendSummary(
                digest=job.day.isoformat(),
                sent=sum(p.sent for p in parts),
                failed=sum(p.failed for p in parts),
                skipped=job.skipped,
                seconds=seconds,
                bounced=sum(p.bounced for p in parts),
                in_flight=sum(p.in_flight for p in parts),
            )
        )
    return merged


# -- In the worker process -----------------------------------------------------------------


def main(pending: list[int] | None = None) -> None:
    """A worker process: read the job from stdin, send, write the result to stdout.

    `pending`: the signals that came before the send loop could handle them.
    """
    try:
        job = pickle.load(sys.stdin.buffer)  # noqa: S301 - from our own parent, over a private pipe
    except (EOFError, pickle.UnpicklingError):  # the parent stopped before it handed one over
        job = None
    if not isinstance(job, WorkerJob):
        # The parent failed while starting the workers, and says why itself.
        raise SystemExit(1)
    faulthandler.enable()  # a fault (SIGSEGV, ...) writes its Python traceback to stderr
    log_lines_to_stderr(job.log_level)
    # As in the parent: what is loaded now lives until exit; keep it out of the collector's
    # full passes during the send loop.
    gc.collect()
    gc.freeze()
    result = run_event_loop(lambda: _work(job, pending if pending is not None else []))
    # A stop that came as the loop closed (blocked since `_work` ended): kept, and reported.
    late: list[int] = []
    for signum in _STOPS:
        signal.signal(signum, lambda number, _frame: late.append(number))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
    if late and result.signal is None:
        result = dataclasses.replace(result, signal=late[0])
    try:
        sys.stdout.buffer.write(pickle.dumps(result))
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # the parent was killed; the ledger holds what this worker did
        os._exit(1)
    if result.crash is not None:
        raise SystemExit(1)  # as an uncaught exception ends a Python process


async def _work(job: WorkerJob, pending: list[int]) -> WorkerResult:
    stop = Stop()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        # The parent forwards the signal that stops the run and says what happens; a second
        # Ctrl-C to it kills the workers. One SIGINT more here is no second Ctrl-C: the same
        # stop sent to every process at once (systemd's KillSignal=SIGINT, `pkill -INT`) came
        # from the parent too, and quit every worker with its messages in flight unrecorded.
        stop.by_signal(signum)

    for signum in _STOPS:
        loop.add_signal_handler(signum, on_signal, signum)
    for early in list(pending):  # came while starting up
        on_signal(early)
    settings = job.settings
    # The parent raised the open-files limit, or said once that it is too low.
    policy = fit_open_files(settings, SendPolicy.from_settings(settings), warn=False)
    policy = policy.for_workers(job.workers)
    summaries: list[SendSummary] = []
    spans: list[tuple[float, float]] = []
    error: SyndicateError | None = None
    crash: str | None = None
    budget = job.limit
    try:
        db = open_database(
            settings.paths.database,
            url=settings.store.url,
            busy_timeout=settings.store.busy_timeout,
            reply_timeout=settings.store.reply_timeout,
            url_name=settings.store_url_from,
        )
    except SyndicateError as exc:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)  # as below
        return WorkerResult((), error=_portable(exc))
    try:
        for day in job.days:
            if stop.stopping or budget == 0:
                break
            sender = DigestSender(
                db=db,
                mailer=open_mailer(settings, folder=day.day.isoformat(), policy=policy),
                settings=settings,
                secret=job.secret,
                policy=policy,
                stop=stop,
                worker=job.worker,
            )
            started = time.monotonic()
            summary = await sender.send(
                templates=day.templates,
                day=day.day,
                now=job.now,
                confirmed_by=day.confirmed_by,
                limit=budget,
            )
            summaries.append(summary)
            spans.append((started, time.monotonic()))
            if budget is not None:
                budget -= summary.sent + summary.failed + summary.in_flight
    except SyndicateError as exc:
        error = _portable(exc)
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            crash = _crashed(job.worker, exc)
        else:  # out of open files: the machine's limit, not a bug (as for one process)
            error = OutOfFilesError.from_os_error(exc)
    except Exception as exc:  # a bug: the sender wound down (what it held given back) first
        crash = _crashed(job.worker, exc)
    finally:
        db.close()
        # Past here the loop's handlers go (the default ones back: a signal would kill this
        # process before it reports); `main` catches what comes meanwhile.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    return WorkerResult(
        tuple(summaries), tuple(spans), signal=stop.signal, error=error, crash=crash
    )


def _crashed(worker: str, exc: Exception) -> str:
    """Write the traceback of the bug that ended this worker to stderr, under a line naming
    it as the parent does; return the exception in one line for the parent's report."""
    number = worker.rsplit("/", 1)[-1]
    lines = traceback.format_exception(exc)
    sys.stderr.write(f"send worker {number} (pid {os.getpid()}) crashed; its traceback:\n")
    sys.stderr.write("".join(lines))
    sys.stderr.flush()
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _portable(error: SyndicateError) -> SyndicateError:
    """The error itself when it survives pickling, else a SendError with its line."""
    try:
        pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    except Exception:
        return SendError(str(error))
    return error
