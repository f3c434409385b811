"""Commands: serve."""

from __future__ import annotations

import dataclasses
import logging
import re
import signal
import socket
import threading
import time
from pathlib import Path

import click
import uvicorn

from syndicate.cli import AppContext, cli, pass_app
from syndicate.config import Settings
from syndicate.errors import InputError
from syndicate.send import SendPolicy, SmtpServer, open_files_limit, open_mailer
from syndicate.send.transports import check_mail_settings
from syndicate.store import Database, open_database
from syndicate.web import DatabaseStore, create_app, make_http_protocol
from syndicate.web.protocol import MAX_CONNECTIONS

log = logging.getLogger("syndicate.serve")

# Confirmation mails of the outbox transport go to outbox/<this>/.
CONFIRMATIONS_FOLDER = "confirmations"
# Open files serve needs besides the connections it takes: the store's, the listener, the
# event loop's, static files being sent, and connections past the cap being answered 503.
OTHER_OPEN_FILES = 64
# An accept that failed for lack of open files is logged at most this often (seconds).
_ACCEPT_LOG_EVERY = 60.0


def most_connections(mail: int = 0) -> tuple[int, int]:
    """The connections serve takes at once, and the SMTP connections its confirmation mails
    may hold open (of `mail`, `smtp.connections`; 0 for the outbox): MAX_CONNECTIONS and
    `mail`, after raising the open-files limit (`ulimit -n`) toward the hard one if they
    need it. When even the hard limit is too low, both share what is left after serve's
    other files (the mail a quarter of it at most), said once: past them a connection is
    answered 503, where each one past the open-files limit would wait in the listen queue, a
    traceback logged each second, and a sign-up whose mail found no file left failed (500)."""
    need = MAX_CONNECTIONS + mail + OTHER_OPEN_FILES
    limit = open_files_limit(need)
    if limit >= need:
        return MAX_CONNECTIONS, mail
    room = limit - OTHER_OPEN_FILES if limit > 2 * OTHER_OPEN_FILES else limit // 2
    mail_fit = min(mail, max(1, room // 4))
    most = max(1, room - mail_fit)
    mailing = (
        f" and {mail} for confirmation mails"
        if mail_fit == mail
        else f" and {mail} for confirmation mails (it sends on {mail_fit})"
    )
    log.warning(
        "serve: this process may open %d files (ulimit -n), too few for %d connections at "
        "once%s: it takes %d, and answers more with 503. Raise the limit (ulimit -n, or "
        "LimitNOFILE= in a systemd unit).",
        limit,
        MAX_CONNECTIONS,
        mailing if mail else "",
        most,
    )
    return most, mail_fit


class AcceptErrors(logging.Filter):
    """asyncio's log of an accept that failed (no file descriptor left: EMFILE, ENFILE),
    a traceback each time the listener tries again (each second), made one line at most
    once a minute: the connection waits in the listen queue and is taken once files
    are free again."""

    def __init__(self) -> None:
        super().__init__()
        self.logged_at: float | None = None
        self.since = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Exception in callback BaseSelectorEventLoop._start_serving"):
            # The listener's accepts, paused a second after such a failure, resumed after
            # serve closed it (a stop within that second): nothing left to accept.
            error = record.exc_info[1] if record.exc_info else None
            return not (isinstance(error, ValueError) and "file descriptor" in str(error))
        if not message.startswith("socket.accept() out of system resource"):
            return True
        self.since += 1
        now = time.monotonic()
        if self.logged_at is not None and now - self.logged_at < _ACCEPT_LOG_EVERY:
            return False
        error = record.exc_info[1] if record.exc_info else None
        reason = getattr(error, "strerror", None) or error or "no file descriptor left"
        record.msg = (
            "serve: cannot accept connections now (%s), %d time(s); they wait in the listen "
            "queue. Raise the open-files limit (ulimit -n, or LimitNOFILE= in a systemd unit)."
        )
        record.args = (reason, self.since)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self.logged_at, self.since = now, 0
        return True


# A confirm or unsubscribe link's token in a request's query string.
_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s]+")


class HideTokens(logging.Filter):
    """uvicorn's access log (`serve -v`) with the token of each confirm or unsubscribe link
    replaced by '…': an unsubscribe token never expires, so whoever read the log (a journal
    shared with a group, a log shipper) could unsubscribe or confirm the subscriber."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_QUERY.sub(r"\1…", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def confirmations_note(settings: Settings) -> str:
    """Where the confirmation mails of sign-ups go, for the start line."""
    if settings.mail.transport == "smtp":
        return f"confirmation mails go out through {SmtpServer.from_settings(settings).where}"
    folder = settings.paths.outbox / CONFIRMATIONS_FOLDER
    try:
        shown = folder.relative_to(Path.cwd())
    except ValueError:
        shown = folder
    return f"confirmation mails are written to {shown}/, not sent (mail.transport is outbox)"


def open_listener(host: str, port: int) -> socket.socket:
    """Bind and listen on host:port, or raise InputError naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the
    # protocol is explicit; without it every response stalls ~40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InputError(
            f"serve: cannot listen on {host}:{port}: {exc.strerror or exc}.",
            hint="Choose another --port or --host, or stop the program that uses it.",
        ) from exc
    sock.set_inheritable(True)
    return sock


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    type=click.IntRange(0, 65535),
    show_default=True,
    help="TCP port to listen on (0: any free port).",
)
@pass_app
def serve_command(app: AppContext, host: str, port: int) -> None:
    """Serve the feeds and pages, sign-up, confirm and one-click unsubscribe over HTTP.

    Example: syndicate serve --host 127.0.0.1 --port 8000
    """
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends `serve` by the signal (a supervisor's stop), not with the one-shot
        # commands' exit 143 and "Run it again" (syndicate.cli): uvicorn shuts down
        # gracefully, puts back the handler it found and raises the signal again. The CLI
        # puts its own handler back once the command returns.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    settings = app.settings
    # As `send` does: a login without its password mails nothing; on the outbox, the folder
    # the confirmation mails go to must take them (the outbox itself need not).
    check_mail_settings(settings, folder=CONFIRMATIONS_FOLDER)
    # The app writes from a thread of its own (one call at a time), and reads from
    # another, through a second connection that never takes the write lock.
    timeout, url = settings.store.busy_timeout, settings.store.url
    silence = settings.store.reply_timeout
    database = open_database(
        settings.paths.database,
        url=url,
        any_thread=True,
        busy_timeout=timeout,
        reply_timeout=silence,
        url_name=settings.store_url_from,
    )
    try:
        reader = open_database(
            settings.paths.database,
            url=url,
            any_thread=True,
            busy_timeout=timeout,
            reply_timeout=silence,
            read_only=True,
            url_name=settings.store_url_from,
        )
        try:
            _serve(app, database, reader, host, port)
        finally:
            reader.close()
    finally:
        database.close()


def _serve(app: AppContext, database: Database, reader: Database, host: str, port: int) -> None:
    settings = app.settings
    store = DatabaseStore(settings, database, reader)
    store.read_secret()  # create the signing secret now, not on the first request
    # The confirmation mails' SMTP connections are open files too: counted with the
    # connections serve takes, so a burst of sign-ups leaves each its mail.
    policy = SendPolicy.from_settings(settings)
    mail = policy.connections if settings.mail.transport == "smtp" else 0
    most, mail = most_connections(mail)
    policy = dataclasses.replace(policy, connections=max(1, mail))
    asgi = create_app(
        settings, store, open_mailer(settings, folder=CONFIRMATIONS_FOLDER, policy=policy)
    )
    sock = open_listener(host, port)
    verbose = app.verbosity > 0
    config = uvicorn.Config(
        asgi,
        log_level=logging.INFO if verbose else logging.WARNING,
        access_log=verbose,
        lifespan="on",
        # h11 with header and body deadlines (slow clients), and a cap the open files allow
        http=make_http_protocol(max_connections=most),
        server_header=False,
        proxy_headers=True,  # X-Forwarded-For from a proxy on 127.0.0.1 names the client
    )
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    accept_errors, hide_tokens = AcceptErrors(), HideTokens()
    logging.getLogger("asyncio").addFilter(accept_errors)
    logging.getLogger("uvicorn.access").addFilter(hide_tokens)
    try:
        app.echo(
            f"Serving {settings.paths.output} at http://{shown}:{bound_port}/ "
            f"(site {settings.site.base_url}); {confirmations_note(settings)}; "
            "press Ctrl-C to stop."
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        logging.getLogger("uvicorn.access").removeFilter(hide_tokens)
        logging.getLogger("asyncio").removeFilter(accept_errors)
        sock.close()
