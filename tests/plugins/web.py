"""Live web server: the real app under uvicorn on 127.0.0.1 at a free port, in a thread.

`live_server(**changes)` starts one and returns a LiveServer; the base URL in its
settings is the server's own address, so links in mails and pages lead back to it.
`shared_server` is one per module with the default settings, which a test module's
fixture hands each test through `reset_server`.
The socket is bound before the server starts and the fixture waits for the app's
lifespan startup, so no test sleeps or retries to find the server up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import functools
import shutil
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from syndicate.config import Settings, load_settings
from syndicate.publish import run_build
from syndicate.send import Mailer, open_mailer
from syndicate.send.digests import todays_digest, write_digest_page
from syndicate.store import Database, open_database
from syndicate.web import DatabaseStore, SubscriptionStore, create_app, make_http_protocol
from tests.plugins.postgres import ENV_STORE_URL, Cluster

CONFIRMATIONS = "confirmations"
# The fixed clock of tests/conftest.py (`now`), for servers that outlive one test.
FIXED_NOW = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent.parent


class MutableClock:
    """A clock the test moves by hand (the app reads it on every request)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class RecordingMailer:
    """Wraps a real mailer: delivers through it, then records the message and wakes waiters.

    Confirmation mails go out after the response (a background task), so tests
    wait here for them instead of polling the outbox.
    """

    def __init__(self, inner: Mailer) -> None:
        self.inner = inner
        self.messages: list[EmailMessage] = []
        self.senders: list[str] = []  # each message's envelope sender (MAIL FROM)
        self._changed = threading.Condition()

    async def send(self, sender: str, recipients: Sequence[str], message: bytes) -> None:
        await self.inner.send(sender, recipients, message)
        parsed = email.message_from_bytes(message, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self._changed:
            self.senders.append(sender)
            self.messages.append(parsed)
            self._changed.notify_all()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def reset(self) -> None:
        """Forget the messages delivered so far (a server shared between tests)."""
        with self._changed:
            self.messages.clear()
            self.senders.clear()

    def wait_for(self, count: int, *, timeout: float = 10.0) -> list[EmailMessage]:
        """Block until `count` messages were delivered in all; return them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                pytest.fail(f"expected {count} mails, got {len(self.messages)} in {timeout} s")
            return list(self.messages)


class Tally:
    """A count other threads add to, and tests wait on."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def add(self) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def reset(self) -> None:
        with self._changed:
            self.count = 0

    def wait_for(self, count: int, *, timeout: float = 10.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.count >= count, timeout):
                pytest.fail(f"expected {count}, got {self.count} in {timeout} s")


class CountingStore:
    """Wraps the app's store: counts the sign-ups it has finished storing (or refused).

    A sign-up is stored before its answer; tests that must know a store call has ended
    (a busy one too) wait here: `server.signups.wait_for(n)`.
    """

    def __init__(self, inner: SubscriptionStore, tally: Tally) -> None:
        self.inner = inner
        self.tally = tally

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def sign_up(self, email: str, *, language: str, now: datetime) -> tuple[Any, bool]:
        try:
            return self.inner.sign_up(email, language=language, now=now)
        finally:
            self.tally.add()


@dataclass
class LiveServer:
    url: str  # the base URL, ending in '/'
    settings: Settings
    clock: MutableClock
    mail: RecordingMailer
    signups: Tally  # sign-ups stored (or refused) so far

    @property
    def outbox(self) -> Path:
        """Where confirmation mails land with the outbox transport."""
        return self.settings.paths.outbox / CONFIRMATIONS


def open_settings_store(settings: Settings, **options: Any) -> Database:
    """Open the store `settings` name: the PostgreSQL database of `store.url`, else the
    SQLite file. A server's own (`server.settings`), whichever engine its module runs on."""
    return open_database(settings.paths.database, url=settings.store.url, **options)


def build_site(settings: Settings, now: datetime) -> None:
    """Build feeds and pages from the shipped seeds, and today's digest page."""
    shutil.copytree(ROOT / "seeds", settings.paths.seeds, dirs_exist_ok=True)
    with open_settings_store(settings) as db:
        run_build(settings, db, now=now)
        plan = todays_digest(settings, db, now=now, create=True)
        assert plan is not None, "the shipped seeds made no digest"
        write_digest_page(settings, plan, now=now)


def bind_loopback() -> socket.socket:
    """A listening socket on 127.0.0.1 at a port the kernel picks."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class _SignalStartup:
    """Wraps an ASGI app; sets `event` once its lifespan startup has completed."""

    def __init__(self, app: Any, event: threading.Event) -> None:
        self.app = app
        self.event = event
        self.failed = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_and_signal(message: Any) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.failed":
                self.failed = True
            if message["type"] in ("lifespan.startup.complete", "lifespan.startup.failed"):
                self.event.set()

        await self.app(scope, receive, send_and_signal)


class _PromptServer(uvicorn.Server):
    """uvicorn's Server that stops as soon as `stop()` is called, instead of at the next of
    its 0.1 s ticks: tests start and stop dozens of servers."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):  # on_tick also reads should_exit
            counter = (counter + 1) % 864_000
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), 0.1)

    def stop(self) -> None:
        self.should_exit = True
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)


@contextmanager
def run_server(
    settings: Settings,
    sock: socket.socket,
    *,
    clock: Callable[[], datetime],
    make_mailer: Callable[[Settings], Mailer],
    wrap_store: Callable[[SubscriptionStore], SubscriptionStore] | None = None,
    timeouts: tuple[float, float] | None = None,
    write_timeout: float | None = None,
    max_connections: int | None = None,
) -> Iterator[threading.Thread]:
    """Run create_app under uvicorn on `sock` in a thread until the block ends.

    The database is opened inside the server thread, for the app's store thread
    (`any_thread`); `wrap_store` may wrap the store the app gets. The HTTP protocol is
    the one `syndicate serve` runs; `timeouts` = (header, body) seconds, `write_timeout`
    and `max_connections` replace its defaults.
    """
    protocol: dict[str, Any] = {}
    if timeouts:
        protocol.update(header_timeout=timeouts[0], body_timeout=timeouts[1])
    if write_timeout is not None:
        protocol["write_timeout"] = write_timeout
    if max_connections is not None:
        protocol["max_connections"] = max_connections
    started = threading.Event()
    failures: list[BaseException] = []
    servers: list[_PromptServer] = []
    wrappers: list[_SignalStartup] = []

    def target() -> None:
        try:
            timeout, silence = settings.store.busy_timeout, settings.store.reply_timeout
            with (
                open_database(
                    settings.paths.database,
                    url=settings.store.url,
                    any_thread=True,
                    busy_timeout=timeout,
                    reply_timeout=silence,
                ) as db,
                open_database(
                    settings.paths.database,
                    url=settings.store.url,
                    any_thread=True,
                    busy_timeout=timeout,
                    reply_timeout=silence,
                    read_only=True,
                ) as reader,
            ):
                store: SubscriptionStore = DatabaseStore(settings, db, reader)
                if wrap_store is not None:
                    store = wrap_store(store)
                app = create_app(settings, store, make_mailer(settings), clock=clock)
                wrappers.append(_SignalStartup(app, started))
                config = uvicorn.Config(
                    wrappers[0],
                    log_level="warning",
                    access_log=False,
                    lifespan="on",
                    http=make_http_protocol(**protocol),
                )
                server = _PromptServer(config)
                servers.append(server)
                server.run(sockets=[sock])
        except BaseException as exc:  # reported to the test thread below
            failures.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=target, name="live-server", daemon=True)
    thread.start()
    if not started.wait(timeout=20):
        pytest.fail("the live server did not start within 20 s")
    if failures:
        raise failures[0]
    if not wrappers or wrappers[0].failed:
        pytest.fail("the live server's startup failed; see the log above")
    try:
        yield thread
    finally:
        if servers:
            servers[0].stop()
        thread.join(timeout=20)
        sock.close()
        assert not thread.is_alive(), "the live server did not stop"
        if failures:
            raise failures[0]


def start_live_server(
    stack: ExitStack,
    settings: Settings,
    now: datetime,
    *,
    mailer: Callable[[Settings], Mailer] | None = None,
    wrap_store: Callable[[SubscriptionStore], SubscriptionStore] | None = None,
    timeouts: tuple[float, float] | None = None,
    write_timeout: float | None = None,
    max_connections: int | None = None,
    public_url: str | None = None,
    **sections: Any,
) -> LiveServer:
    """Start the app on 127.0.0.1:<free port> until `stack` closes (see `live_server`)."""
    sock = bind_loopback()
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    # `public_url`: the site.base_url of a server behind a proxy (links lead there, not here).
    site = dataclasses.replace(sections.pop("site", settings.site), base_url=public_url or url)
    configured = dataclasses.replace(settings, site=site, **sections)
    configured.paths.output.mkdir(parents=True, exist_ok=True)
    clock = MutableClock(now)
    inner = mailer or (lambda s: open_mailer(s, folder=CONFIRMATIONS))
    recorder = RecordingMailer(inner(configured))
    tally = Tally()

    def wrap(store: SubscriptionStore) -> SubscriptionStore:
        counted = CountingStore(store, tally)
        return wrap_store(counted) if wrap_store is not None else counted

    stack.enter_context(
        run_server(
            configured,
            sock,
            clock=clock,
            make_mailer=lambda _: recorder,
            wrap_store=wrap,
            timeouts=timeouts,
            write_timeout=write_timeout,
            max_connections=max_connections,
        )
    )
    return LiveServer(url=url, settings=configured, clock=clock, mail=recorder, signups=tally)


@pytest.fixture
def live_server(
    store: str, settings: Settings, now: datetime
) -> Iterator[Callable[..., LiveServer]]:
    """Start the app on 127.0.0.1:<free port>: `live_server(subscribe=..., mailer=...)`,
    on the test's store (it takes `store`: a test that starts a server runs on both
    engines, and every server it starts shares that one store).

    Keyword arguments replace whole settings sections (`subscribe=SubscribeSettings(...)`);
    `mailer` is a factory `settings -> Mailer` (default: the configured transport,
    the outbox), wrapped in a RecordingMailer; `wrap_store` wraps the app's store;
    `timeouts` = (header, body) seconds for slow clients, `write_timeout` for clients that
    do not read, `max_connections` the cap; `public_url` the site.base_url of a server
    behind a proxy (default: its own address). The clock starts at the fixed `now`.
    For a server with the default settings, `shared_server` is started once per module.
    """
    with ExitStack() as stack:
        yield functools.partial(start_live_server, stack, settings, now)


# Tables a reset leaves: the signing secret the running app holds, and SQLite's own.
_KEPT_TABLES = ("meta", "sqlite_sequence")


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, store_backend: str, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    """One live server for a whole test module, with the default settings (but no sign-up
    rate limit: its tests share one client address), on the module's store engine (a
    test that takes it runs on both): on PostgreSQL a database of its own, which the
    tests' `store` does not touch. Starting and stopping uvicorn costs more than most
    tests; a test takes it through a fixture that calls `reset_server`."""
    work = tmp_path_factory.mktemp("live")
    (work / "seeds").mkdir()
    environ: dict[str, str] = {}
    cluster: Cluster | None = None
    if store_backend == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        environ[ENV_STORE_URL] = cluster.new_database()
    settings = load_settings(None, environ, cwd=work)
    unlimited = dataclasses.replace(settings.subscribe, rate_limit=1_000_000)
    try:
        with ExitStack() as stack:
            yield start_live_server(stack, settings, FIXED_NOW, subscribe=unlimited)
    finally:
        if cluster is not None:  # the server has stopped: its database goes back
            cluster.drop_database(environ[ENV_STORE_URL])


def reset_server(server: LiveServer, now: datetime) -> LiveServer:
    """Give the next test a server as if just started: the clock at `now`, no mail or
    sign-ups counted, empty output, outbox and seeds folders, and no rows in the database
    (ids start at 1 again); only the signing secret stays."""
    server.clock.now = now
    server.mail.reset()
    server.signups.reset()
    paths = server.settings.paths
    for folder in (paths.output, paths.outbox, paths.seeds):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    with open_settings_store(server.settings) as db:
        if db.dialect == "postgresql":
            with db.transaction() as conn:
                names = conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                    "AND tablename NOT IN ('meta', 'syndicate_schema')"
                ).fetchall()
                listed = ", ".join(f'"{row[0]}"' for row in names)
                conn.execute(f"TRUNCATE {listed} RESTART IDENTITY CASCADE")
            return server
        db.conn.execute("PRAGMA foreign_keys = OFF")  # every table is emptied anyway
        with db.transaction() as conn:
            tables = [
                str(row[0])
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if row[0] not in _KEPT_TABLES
            ]
            for table in tables:
                conn.execute(f'DELETE FROM "{table}"')  # noqa: S608 - the schema's own names
            conn.execute("DELETE FROM sqlite_sequence")
    return server
