"""`send --workers`: how the run handles its worker processes, apart from any store."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from collections import Counter

import pytest

from syndicate.send.workers import signal_workers


def test_signalling_workers_never_takes_a_dead_workers_exit_status() -> None:
    """A worker that dies as the run signals the workers keeps its own exit status.

    Python 3.11's `Popen.send_signal` first polls the child, and so reaps one that has just
    died before asyncio's child watcher does; the watcher then reports it as 255 ("Unknown
    child process pid"), and the run's lost-worker line said "exited 255" where the worker
    was killed by SIGKILL. Here each child kills itself with SIGKILL while the signals go
    out, as a worker killed at the moment the operator stops the run.
    """

    async def one() -> int | None:
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "kill -KILL $$")
        while proc.returncode is None:
            signal_workers([proc], 0)  # signal 0: checked, delivered to no one
            await asyncio.sleep(0)
        return await proc.wait()

    async def many() -> list[int | None]:
        return [await one() for _ in range(40)]

    codes = asyncio.run(many())
    assert codes == [-signal.SIGKILL] * 40, Counter(codes)


# Run as pid 1 of a pid namespace of its own, where nothing else starts processes: a worker
# dies and asyncio's child watcher (a thread) reaps it, but the loop has not yet run the
# callback that sets its `returncode`; the next process, not the run's child, is given the
# dead worker's pid (ns_last_pid); then the run signals its workers. What that process
# receives first (it waits for SIGTERM or SIGRTMIN; a pending SIGTERM comes out first) is
# printed: SIGRTMIN, sent by this script after, unless the run's SIGTERM reached it.
_REUSED_PID = r"""
import asyncio, os, signal, subprocess, sys, threading
from syndicate.send.workers import signal_workers

OTHER = '''
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGRTMIN})
print("ready", flush=True)
print(signal.sigwait({signal.SIGTERM, signal.SIGRTMIN}).name, flush=True)
'''

def last_pid(pid):
    with open("/proc/sys/kernel/ns_last_pid", "w") as last:
        last.write(str(pid))

async def main():
    last_pid(100)
    worker = await asyncio.create_subprocess_exec("sleep", "60")
    watchers = [t for t in threading.enumerate() if t.name.startswith("asyncio-waitpid-")]
    if len(watchers) != 1:
        print("no watcher thread")
        return
    os.kill(worker.pid, signal.SIGKILL)
    watchers[0].join()  # the worker is reaped; the loop has not run since
    assert worker.returncode is None
    last_pid(worker.pid - 2)
    # sh takes the pid before the worker's; the other process, its child, the worker's.
    shell = subprocess.Popen(
        ["sh", "-c", '"$0" -c "$1" & echo $!; wait', sys.executable, OTHER],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert int(shell.stdout.readline()) == worker.pid
    assert shell.stdout.readline() == "ready\n"
    signal_workers([worker], signal.SIGTERM)
    os.kill(worker.pid, signal.SIGRTMIN)
    print(shell.stdout.readline().strip())
    shell.wait()
    await worker.wait()

asyncio.run(main())
"""


def _can_unshare_pids() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-Urpf", "--mount-proc", "sh", "-c", "echo 1 > /proc/sys/kernel/ns_last_pid"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare_pids(), reason="needs unshare for a pid namespace")
def test_signalling_workers_never_signals_the_next_owner_of_a_reaped_workers_pid() -> None:
    """A worker reaped by asyncio's child watcher, its `returncode` not yet set (that comes
    on the loop, after the watcher's thread), has given up its pid: the run's stop signal
    must not go to whichever process is given that pid next."""
    done = subprocess.run(
        ["unshare", "-Urpf", "--mount-proc", sys.executable, "-c", _REUSED_PID],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "SIGRTMIN\n"), done.stderr
