"""A slow, stalling, breakable network link for tests: a TCP proxy on 127.0.0.1.

`run_link(port, latency=0.03)` listens on a free port of 127.0.0.1 and forwards every
connection to 127.0.0.1:`port` (the session's PostgreSQL cluster, say), holding each
chunk `latency` seconds in each direction, as a link to a server in another data centre
would (the chunks are pipelined: latency, not a bandwidth cap). `stall(seconds)` stops
forwarding in both directions (connections stay open, bytes wait, new connections are
accepted but not forwarded) until `resume()` or the time is up; `cut()` closes every
connection at once, as a broken link or a fail-over does. The proxy runs on an asyncio
loop in a thread of its own; its methods may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 65536


class Link:
    """The proxy's state; made by `run_link`."""

    def __init__(self, target_port: int, *, latency: float) -> None:
        self.target_port = target_port
        self.latency = latency
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self.bytes_forwarded = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stalls: list[asyncio.TimerHandle] = []
        self._tasks: set[asyncio.Task[None]] = set()  # one per connection
        self._changed = threading.Condition()
        self.resumed = threading.Event()  # set while the link forwards
        self.resumed.set()

    # --- the test's side (any thread) ------------------------------------------------

    def url(self, url: str) -> str:
        """`url` (postgresql://user@127.0.0.1:PORT/db) with the proxy's port instead."""
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def stall(self, seconds: float | None = None) -> None:
        """Stop forwarding, for `seconds` (None: until `resume`)."""
        self._call(self._stall, seconds)

    def resume(self) -> None:
        self._call(self._resume)

    def cut(self) -> None:
        """Close every connection through the link now (new ones are still accepted)."""
        self._call(self._cut)

    def wait_for_bytes(self, count: int, timeout: float = 30.0) -> bool:
        """Block until at least `count` bytes went through the link, in all."""
        with self._changed:
            return self._changed.wait_for(lambda: self.bytes_forwarded >= count, timeout)

    def _call(self, function: object, *args: object) -> None:
        assert self._loop is not None, "the link is not running"
        done = threading.Event()

        def run() -> None:
            try:
                function(*args)  # type: ignore[operator]
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        assert done.wait(10), "the link's loop did not answer"

    # --- the loop's side -------------------------------------------------------------

    def _stall(self, seconds: float | None) -> None:
        assert self._flowing is not None
        assert self._loop is not None
        self._flowing.clear()
        self.resumed.clear()
        for handle in self._stalls:
            handle.cancel()
        self._stalls.clear()
        if seconds is not None:
            self._stalls.append(self._loop.call_later(seconds, self._resume))

    def _resume(self) -> None:
        assert self._flowing is not None
        self._flowing.set()
        self.resumed.set()

    def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        self.accepted += 1
        self._writers.add(client_out)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await self._flowing.wait()
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_out.transport.abort()
            self._writers.discard(client_out)
            return
        self._writers.add(server_out)
        pipes = [
            asyncio.create_task(self._pipe(client_in, server_out)),
            asyncio.create_task(self._pipe(server_in, client_out)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for writer in (client_out, server_out):
                writer.transport.abort()
                self._writers.discard(writer)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Forward `source` to `sink`, each chunk `latency` seconds after it came in."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            try:
                while chunk := await source.read(_CHUNK):
                    queue.put_nowait((time.monotonic() + self.latency, chunk))
            except OSError:
                pass  # reset: the same as closed
            finally:
                queue.put_nowait((0.0, b""))

        reader = asyncio.create_task(read())
        assert self._flowing is not None
        try:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    return  # the source closed: the caller closes both sides
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                try:
                    sink.write(chunk)
                    await sink.drain()
                except OSError:
                    return
                with self._changed:
                    self.bytes_forwarded += len(chunk)
                    self._changed.notify_all()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reader


@contextlib.contextmanager
def run_link(target_port: int, *, latency: float = 0.0) -> Iterator[Link]:
    """Run a Link to 127.0.0.1:`target_port` on a free port of 127.0.0.1 for the block."""
    link = Link(target_port, latency=latency)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stopping: list[asyncio.Event] = []

    async def main() -> None:
        link._loop = loop
        link._flowing = asyncio.Event()
        link._flowing.set()
        server = await asyncio.start_server(link._serve, "127.0.0.1", 0)
        link.port = int(server.sockets[0].getsockname()[1])
        stop = asyncio.Event()
        stopping.append(stop)
        started.set()
        async with server:
            await stop.wait()
            server.close()
            link._flowing.set()
            link._cut()
            # Each connection's task ends on its own once its sockets are closed (a task
            # cancelled here would be reported by asyncio's stream callback).
            if link._tasks:
                await asyncio.wait(set(link._tasks), timeout=5)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10), "the link did not start"
        yield link
    finally:
        if stopping:
            loop.call_soon_threadsafe(stopping[0].set)
        thread.join(timeout=10)
        assert not thread.is_alive(), "the link did not stop"
        loop.close()
