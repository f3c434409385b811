"""Commands: serve."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path

import click
import uvicorn

from syndicate.cli import AppContext, cli, pass_app
from syndicate.config import Settings
from syndicate.errors import InputError
from syndicate.send import SmtpServer, open_mailer
from syndicate.send.transports import check_mail_settings
from syndicate.store import Database, open_database
from syndicate.web import DatabaseStore, create_app, make_http_protocol

# Confirmation mails of the outbox transport go to outbox/<this>/.
CONFIRMATIONS_FOLDER = "confirmations"


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
    check_mail_settings(settings)  # as `send` does: a login without its password mails nothing
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
    )
    try:
        reader = open_database(
            settings.paths.database,
            url=url,
            any_thread=True,
            busy_timeout=timeout,
            reply_timeout=silence,
            read_only=True,
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
    asgi = create_app(settings, store, open_mailer(settings, folder=CONFIRMATIONS_FOLDER))
    sock = open_listener(host, port)
    verbose = app.verbosity > 0
    config = uvicorn.Config(
        asgi,
        log_level=logging.INFO if verbose else logging.WARNING,
        access_log=verbose,
        lifespan="on",
        http=make_http_protocol(),  # h11 with header and body deadlines (slow clients)
        server_header=False,
        proxy_headers=True,  # X-Forwarded-For from a proxy on 127.0.0.1 names the client
    )
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    app.echo(
        f"Serving {settings.paths.output} at http://{shown}:{bound_port}/ "
        f"(site {settings.site.base_url}); {confirmations_note(settings)}; "
        "press Ctrl-C to stop."
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
