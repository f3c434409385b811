"""`send --workers`: how the run handles its worker processes, apart from any store."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

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
