"""`syndicate bounces -` as Postfix's pipe, as docs/operating.md tells an operator to set it
up: a private Postfix (tests/plugins/postfix.py) hands its DSNs to `python -m syndicate
bounces -` through a master.cf `pipe` transport (`user=` the unprivileged user that owns a
copy of the project folder) and through an /etc/aliases command, each with the minimal
environment Postfix gives a command (no HOME, PATH=/usr/bin:/bin, no SYNDICATE_*).

What Postfix does with the command's exit code: 0 delivered, 75 (EX_TEMPFAIL) deferred and
tried again on the next queue run, anything else returned to the sender.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from syndicate.config import Settings, load_settings
from syndicate.store import Database, open_database
from syndicate.store.meta import get_secret
from syndicate.store.subscribers import add_subscriber, get_by_email, iter_subscribers
from syndicate.tokens import make_return_token
from tests.conftest import DATA
from tests.plugins.postfix import DEADLINE, NOW, Postfix, add_digest, run_postfix, send_day
from tests.plugins.postgres import Cluster
from tests.plugins.smtp import SmtpServer, run_smtp_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("postfix") is None, reason="Postfix is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix with pipes needs root"),
    pytest.mark.usefixtures("store"),
]

DAY = date(2024, 11, 1)
NEXT_DAY = date(2024, 11, 2)
# The user syndicate's cron jobs run as, owning the project folder (config and SQLite
# store, both 0600); the pipe transport runs as it. Postfix's default_privs is `nobody`.
OWNER = "postgres"
HARD = ("reader03@example.net", "reader07@example.net", "reader11@example.net")
COMPLAINER = "reader18@example.net"
ALIAS_DOMAIN = "alias.example.org"


def _pipe_python(folder: Path) -> str:
    """A Python that OWNER can run and that imports this checkout's syndicate.

    This interpreter when OWNER may run it; else (a venv whose base lives under /root, say)
    a venv made here from the system's Python of the same version, reading this venv's
    site-packages. Skips when there is none.
    """
    probe = ["-c", "import syndicate, flufl.bounce"]
    if _runs_as(OWNER, [sys.executable, *probe]):
        return sys.executable
    base = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin")
    if base is None:
        pytest.skip(f"no Python the user {OWNER} can run for the pipe")
    venv = folder / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    ours = sysconfig.get_path("purelib")
    Path(site, "syndicate-tests.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    python = str(venv / "bin" / "python")
    if not _runs_as(OWNER, [python, *probe]):
        pytest.skip(f"no Python the user {OWNER} can run for the pipe")
    return python


def _runs_as(user: str, argv: list[str]) -> bool:
    done = subprocess.run(
        ["runuser", "-u", user, "--", *argv], capture_output=True, cwd="/", timeout=60
    )
    return done.returncode == 0


@dataclass
class Pipes:
    mta: Postfix
    inbox: SmtpServer
    project: Path  # owned by OWNER, 0700: syndicate.toml and the SQLite store
    aliases: Path

    @property
    def config(self) -> Path:
        return self.project / "syndicate.toml"

    def write_config(self, bounce_domain: str = "news.example.org", store: str = "") -> Settings:
        """The project's config, as the cron user keeps it: 0600, owned by OWNER."""
        url = store or os.environ.get("SYNDICATE_STORE_URL", "")
        self.config.write_text(
            '[site]\nbase_url = "https://news.example.org/"\n'
            '[paths]\ndatabase = "syndicate.db"\n'
            f'[store]\nurl = "{url}"\nbusy_timeout = 0.5\n'
            '[mail]\nfrom = "News <news@example.org>"\n'
            f'bounce_address = "bounces@{bounce_domain}"\n',
            encoding="utf-8",
        )
        self.config.chmod(0o600)
        self.hand_over()
        return load_settings(self.config, {}, cwd=Path("/"))

    def hand_over(self) -> None:
        """Give the project's files (the test, as root, made or opened them) to OWNER."""
        owner = pwd.getpwnam(OWNER)
        for path in [self.project, *self.project.iterdir()]:
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def own_aliases(self, user: str) -> None:
        """Give the alias file to `user` and rebuild its database as an operator does
        (`postalias` writes it as the file's owner), then `postfix reload`."""
        entry = pwd.getpwnam(user)
        os.chown(self.aliases, entry.pw_uid, entry.pw_gid)
        database = self.aliases.with_name(self.aliases.name + ".db")
        database.unlink(missing_ok=True)
        etc = str(self.mta.etc)
        subprocess.run(["postalias", "-c", etc, str(self.aliases)], check=True, timeout=60)
        assert database.stat().st_uid == entry.pw_uid
        self.mta.postfix("reload")

    def reset(self) -> int:
        """Forget the previous test's refusals and mail, in the inbox and in Postfix's
        queue (one test's deferred mail must not count in the next); the maillog's length."""
        handler = self.inbox.handler
        with handler.lock:
            handler.messages.clear()
            handler.refusals.clear()
        for path in self.project.iterdir():
            path.unlink()
        subprocess.run(
            ["postsuper", "-c", str(self.mta.etc), "-d", "ALL"], check=True, capture_output=True
        )
        return len(self.mta.log())

    def hold(self) -> None:
        """Keep what Postfix would hand to the syndicate pipe in its queue (defer_transports):
        while the test, as root, has the store open, a DSN piped at once ran as OWNER on files
        root had just made, and was deferred."""
        subprocess.run(
            ["postconf", "-c", str(self.mta.etc), "-e", "defer_transports=syndicate"],
            check=True,
            capture_output=True,
        )
        self.mta.postfix("reload")

    def release(self, since: int, count: int) -> list[str]:
        """Pipe what was held, and what comes from now on; once the maillog has `count` pipe
        deliveries since `since`, return them. The queue is flushed until then: a flush sent
        while Postfix's queue manager restarts after the reload would be lost."""
        subprocess.run(
            ["postconf", "-c", str(self.mta.etc), "-e", "defer_transports="],
            check=True,
            capture_output=True,
        )
        self.mta.postfix("reload")
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            self.mta.postqueue("-f")
            lines = [x for x in self.mta.log()[since:].splitlines() if "relay=syndicate," in x]
            if len(lines) >= count:
                return lines
            time.sleep(0.5)  # the maillog has no event to wait on: poll it
        pytest.fail(f"Postfix piped fewer than {count} messages:\n{self.mta.log()[since:]}")

    def wait_for(self, since: int, text: str, count: int = 1) -> list[str]:
        """The maillog lines since `since` holding `text`, once there are `count` of them."""
        return self.mta.wait_for_log(text, count, since=since)


@pytest.fixture(scope="module")
def pipes() -> Iterator[Pipes]:
    """One Postfix for the module: news.example.org goes to the `syndicate` pipe transport,
    ALIAS_DOMAIN is local and its `bounces` alias pipes to the same command."""
    folder = Path(tempfile.mkdtemp(prefix="syndicate-pipe-"))
    try:
        folder.chmod(0o755)
        python = _pipe_python(folder)
        project = folder / "project"
        project.mkdir(mode=0o700)
        owner = pwd.getpwnam(OWNER)
        os.chown(project, owner.pw_uid, owner.pw_gid)
        command = f"{python} -m syndicate --config {project / 'syndicate.toml'} bounces -"
        # The alias file lives in a folder OWNER may write, so that `postalias`, which
        # runs as the file's owner, can write its database there.
        (folder / "aliases.d").mkdir(mode=0o755)
        os.chown(folder / "aliases.d", owner.pw_uid, owner.pw_gid)
        aliases = folder / "aliases.d" / "syndicate"
        aliases.write_text(f'bounces: "|{command}"\n', encoding="utf-8")
        settings = {
            "virtual_mailbox_domains": "",
            "relay_domains": "news.example.org",
            "transport_maps": "inline:{news.example.org=syndicate:}",
            "mydestination": ALIAS_DOMAIN,
            "alias_maps": f"hash:{aliases}",
            "alias_database": f"hash:{aliases}",
            # A DSN the pipe defers (75) stays queued until the test flushes the queue.
            "maximal_queue_lifetime": "1d",
            "bounce_queue_lifetime": "1d",
            "queue_run_delay": "1h",
            "minimal_backoff_time": "1h",
            "maximal_backoff_time": "1h",
        }
        service = (
            f"syndicate/unix=syndicate unix - n n - - pipe flags=Rq user={OWNER} argv={command}"
        )
        with (
            run_smtp_server() as inbox,
            run_postfix(inbox.port, settings=settings, services=[service]) as mta,
        ):
            subprocess.run(
                ["postalias", "-c", str(mta.etc), str(aliases)], check=True, capture_output=True
            )
            yield Pipes(mta, inbox, project, aliases)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _submit(mta: Postfix, recipient: str, message: bytes, sender: str = "") -> None:
    with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as client:
        client.sendmail(sender, [recipient], message)


def _dsn(db: Database, settings: Settings, email: str, domain: str) -> tuple[str, bytes]:
    """A mailbox provider's hard bounce for `email`, to its digest's VERP address."""
    subscriber = get_by_email(db, email)
    assert subscriber is not None
    token = make_return_token(
        get_secret(settings, db), subscriber_id=subscriber.id, nonce=subscriber.token_nonce, day=DAY
    )
    verp = f"bounces+{token}@{domain}"
    raw = (DATA / "bounces" / "gmail-hard.eml").read_bytes()
    # As it leaves the provider: the Delivered-To our MTA once added is not in it yet.
    raw = raw.removeprefix(b"Delivered-To: bounces@news.example.org\n")
    raw = raw.replace(b"bounces@news.example.org", verp.encode())
    return verp, raw.replace(b"gone@gmail.example", email.encode())


def _open(settings: Settings) -> Database:
    """The store the project's config names (on PostgreSQL, its `store.url`)."""
    return open_database(settings.paths.database, url=settings.store.url)


def _statuses(settings: Settings) -> dict[str, str]:
    with _open(settings) as db:
        return {s.email: str(s.status) for s in iter_subscribers(db) if s.status != "confirmed"}


def _events(settings: Settings) -> int:
    with _open(settings) as db, db.transaction() as conn:
        return int(conn.execute("SELECT count(*) FROM mail_events").fetchone()[0])


async def test_postfix_dsns_through_the_pipe_transport_stop_the_next_send(pipes: Pipes) -> None:
    since = pipes.reset()
    settings = pipes.write_config()
    pipes.hold()  # until the store is OWNER's again (below)
    emails = [f"reader{i:02d}@example.net" for i in range(20)]
    for address in HARD:
        pipes.inbox.handler.refuse(address, f"550 5.1.1 <{address}>: no such user")
    with _open(settings) as db:
        for address in emails:
            add_subscriber(db, address, now=NOW)
        add_digest(db, DAY)
        # The MTA accepts all 20: the refusals come back later, as mail, through the pipe.
        assert await send_day(db, settings, pipes.mta.port, DAY) == 20
        complainer = get_by_email(db, COMPLAINER)
        assert complainer is not None
        token = make_return_token(
            get_secret(settings, db),
            subscriber_id=complainer.id,
            nonce=complainer.token_nonce,
            day=DAY,
        )
    pipes.hand_over()
    assert pipes.inbox.handler.wait_for(17, timeout=DEADLINE)
    # A mailbox provider's spam complaint, and a mail that is no report, come the same way.
    verp = f"bounces+{token}@news.example.org"
    arf = (DATA / "bounces" / "microsoft-arf.eml").read_bytes()
    _submit(
        pipes.mta,
        verp,
        arf.replace(b"bounces@news.example.org", verp.encode()),
        sender="staff@hotmail.com",
    )
    _submit(
        pipes.mta,
        "bounces@news.example.org",
        (DATA / "bounces" / "not-a-bounce.eml").read_bytes(),
        sender="someone@example.com",
    )
    # 3 DSNs from Postfix itself, the complaint, the stray mail: each delivered (exit 0).
    delivered = pipes.release(since, 5)
    assert all("status=sent" in line for line in delivered), pipes.mta.log()[since:]

    assert _statuses(settings) == {
        **{address: "bounced" for address in HARD},
        COMPLAINER: "complained",
    }
    with _open(settings) as db:
        add_digest(db, NEXT_DAY)
        with run_smtp_server() as direct:
            assert await send_day(db, settings, direct.port, NEXT_DAY) == 16
            assert sorted(direct.handler.recipients()) == sorted(
                set(emails) - set(HARD) - {COMPLAINER}
            )


async def test_a_store_out_of_reach_defers_the_dsn_and_the_queue_run_delivers_it_once(
    pipes: Pipes, store: str, request: pytest.FixtureRequest
) -> None:
    since = pipes.reset()
    cluster: Cluster | None = None
    if store == "postgresql":
        cluster = request.getfixturevalue("own_cluster")
        url = cluster.new_database()
        settings = pipes.write_config(store=url)
    else:
        settings = pipes.write_config()
    with _open(settings) as db:
        add_subscriber(db, "gone@example.net", now=NOW)
        verp, dsn = _dsn(db, settings, "gone@example.net", "news.example.org")
    pipes.hand_over()
    if cluster is not None:
        cluster.stop()  # the database server is down
        held = None
    else:
        held = sqlite3.connect(settings.paths.database, isolation_level=None)
        held.execute("BEGIN EXCLUSIVE")  # another writer holds the store
    try:
        _submit(pipes.mta, verp, dsn)
        [line] = pipes.wait_for(since, "relay=syndicate,")
        assert "status=deferred" in line, line
        assert pipes.mta.queued() == 1, pipes.mta.log()[since:]
    finally:
        if cluster is not None:
            cluster.start()
        else:
            assert held is not None
            held.execute("ROLLBACK")
            held.close()
    pipes.hand_over()
    assert _statuses(settings) == {}
    pipes.mta.postqueue("-f")
    [*_, line] = pipes.wait_for(since, "relay=syndicate,", 2)
    assert "status=sent" in line, line
    assert _statuses(settings) == {"gone@example.net": "bounced"}
    assert _events(settings) == 1


def test_an_alias_pipe_runs_as_the_alias_files_owner_and_defers_until_it_can_read(
    pipes: Pipes,
) -> None:
    """local(8) runs an /etc/aliases command as the alias database's owner, or as
    default_privs (nobody) when root owns it: nobody cannot read the 0600 config (nor the
    store). That is a setup fault the operator fixes: the DSN is deferred (75), not lost."""
    since = pipes.reset()
    settings = pipes.write_config(bounce_domain=ALIAS_DOMAIN)
    with _open(settings) as db:
        add_subscriber(db, "gone@example.net", now=NOW)
        verp, dsn = _dsn(db, settings, "gone@example.net", ALIAS_DOMAIN)
    pipes.hand_over()
    pipes.own_aliases("root")  # as /etc/aliases is: what the docs once showed
    _submit(pipes.mta, verp, dsn)
    [line] = pipes.wait_for(since, "relay=local,")
    assert "status=deferred" in line, line
    assert "Command output: Error: " in line, line
    assert "Traceback" not in line, line
    assert pipes.mta.queued() == 1
    assert _statuses(settings) == {}

    pipes.own_aliases(OWNER)  # an alias file of its own, as docs/operating.md now says
    pipes.mta.postqueue("-f")
    [*_, line] = pipes.wait_for(since, "relay=local,", 2)
    assert "status=sent (delivered to command: " in line, line
    assert _statuses(settings) == {"gone@example.net": "bounced"}
    assert _events(settings) == 1
    assert pipes.mta.queued() == 0
