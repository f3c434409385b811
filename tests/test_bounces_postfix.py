"""Bounces end to end through a real MTA: Debian's Postfix, started by the test with its own
config directory, relays the digest to aiosmtpd (which refuses some recipients), writes the
DSNs itself and delivers them, with a spam complaint, to a Maildir `syndicate bounces` reads.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from syndicate.cli import cli
from syndicate.config import Settings, load_settings
from syndicate.digest import RenderedEmail
from syndicate.mail import MailInfo, MessageTemplate, build_digest_template
from syndicate.send import SmtpMailer, send_digest
from syndicate.store import Database
from syndicate.store.bounces import complaint_warning, recent_rates
from syndicate.store.meta import get_secret
from syndicate.store.subscribers import add_subscriber, get_by_email, iter_subscribers
from syndicate.tokens import make_return_token
from tests.conftest import DATA
from tests.plugins.postgres import open_store, store_environ
from tests.plugins.smtp import free_port, run_smtp_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("postfix") is None, reason="Postfix is not installed"),
    pytest.mark.usefixtures("store"),
]

DAY = date(2024, 11, 1)
NEXT_DAY = date(2024, 11, 2)
NOW = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)
MARKER = "https://marker.syndicate.invalid/unsubscribe?token=MARKER-1"
HARD = ("reader03@example.net", "reader07@example.net", "reader11@example.net")
SOFT = "reader15@example.net"
COMPLAINER = "reader18@example.net"
# How long Postfix may take to relay 20 messages and write 4 DSNs on a busy machine.
DEADLINE = 60.0


@dataclass
class Postfix:
    root: Path
    port: int
    maildir: Path

    def postfix(self, *args: str) -> None:
        subprocess.run(
            ["postfix", "-c", str(self.root / "etc"), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else "(no maillog)"

    def wait_for_mail(self, count: int) -> list[Path]:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            found = sorted((self.maildir / "new").glob("*")) if self.maildir.is_dir() else []
            if len(found) >= count:
                return found
            time.sleep(0.1)  # a Maildir has no event to wait on: poll it
        pytest.fail(f"Postfix delivered fewer than {count} reports:\n{self.log()[-3000:]}")


def _postconf(etc: Path, *args: str) -> None:
    subprocess.run(["postconf", "-c", str(etc), *args], check=True, capture_output=True)


@contextlib.contextmanager
def run_postfix(relay_port: int) -> Iterator[Postfix]:
    """Run a private Postfix instance relaying to 127.0.0.1:relay_port; stop it after."""
    owner = pwd.getpwnam("postfix")
    # Postfix's daemons (user postfix) must reach the queue: not under pytest's 0700 tmp.
    root = Path(tempfile.mkdtemp(prefix="syndicate-postfix-"))
    root.chmod(0o755)
    etc, queue, data, mail = (root / n for n in ("etc", "queue", "data", "mail"))
    for folder in (etc, queue, data, mail):
        folder.mkdir()
    os.chown(data, owner.pw_uid, owner.pw_gid)
    os.chown(mail, owner.pw_uid, owner.pw_gid)
    # Debian's postinst writes /etc/postfix/master.cf from the shipped master.cf.dist; a
    # package installed with "No configuration" may not have it.
    shipped = Path("/etc/postfix/master.cf")
    if not shipped.is_file():
        shipped = Path("/usr/share/postfix/master.cf.dist")
    shutil.copy(shipped, etc / "master.cf")
    port = free_port()
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": str(queue),
        "data_directory": str(data),
        "maillog_file": str(root / "maillog"),
        "maillog_file_prefixes": str(root),
        "myhostname": "mta.syndicate.test",
        "mydomain": "syndicate.test",
        "mydestination": "",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "relayhost": f"[127.0.0.1]:{relay_port}",
        "smtp_dns_support_level": "disabled",
        # The bounce address's domain is local: every address in it lands in one Maildir.
        "virtual_mailbox_domains": "news.example.org",
        "virtual_mailbox_base": str(mail),
        "virtual_mailbox_maps": "static:Maildir/",
        "virtual_uid_maps": f"static:{owner.pw_uid}",
        "virtual_gid_maps": f"static:{owner.pw_gid}",
        "recipient_delimiter": "+",
        # A deferred message is returned at once (Action: failed, its 4.x.x status), so
        # a soft bounce needs no waiting for the queue lifetime.
        "maximal_queue_lifetime": "0",
        "bounce_queue_lifetime": "0",
        "alias_maps": "",
        "alias_database": "",
        "biff": "no",
        "smtputf8_enable": "no",
    }
    (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    _postconf(etc, "-M#", "smtp/inet")
    _postconf(etc, "-M", f"127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - smtpd")
    _postconf(etc, "-F", "*/*/chroot = n")
    server = Postfix(root, port, mail / "Maildir")
    server.postfix("check")
    server.postfix("start")
    pid_file = queue / "pid" / "master.pid"
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"Postfix did not listen on {port}:\n{server.log()}")
            time.sleep(0.05)
        master = int(pid_file.read_text().strip())
        yield server
    finally:
        server.postfix("stop")
        deadline = time.monotonic() + DEADLINE
        with contextlib.suppress(NameError):
            while _alive(master):
                assert time.monotonic() < deadline, "Postfix's master did not stop"
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for good; only its parent (not us) could reap it.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def _templates(settings: Settings, day: date) -> dict[str, MessageTemplate]:
    rendered = RenderedEmail(
        lang="vi",
        subject="Bản tin",
        preheader="",
        html=f'<p><a href="{MARKER}">Hủy đăng ký</a></p>\n',
        text=f"Hủy đăng ký: {MARKER}\n",
    )
    template = build_digest_template(
        rendered, info=MailInfo.from_settings(settings), digest_day=day, marker=MARKER, now=NOW
    )
    return {"vi": template}


def _digest(db: Database, day: date) -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
            (day.isoformat(), f"{day.isoformat()}T06:00:00+00:00"),
        )


async def _send(db: Database, settings: Settings, port: int, day: date) -> int:
    mailer = SmtpMailer(
        host="127.0.0.1",
        port=port,
        tls="none",
        timeout=10,
        connections=2,
        messages_per_connection=100,
    )
    summary = await send_digest(
        db=db,
        mailer=mailer,
        templates=_templates(settings, day),
        settings=settings,
        secret=get_secret(settings, db),
        day=day,
        now=NOW,
    )
    return summary.sent


async def test_bounces_written_by_postfix_stop_the_next_send_to_exactly_the_right_16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "syndicate.toml"
    config.write_text(
        '[site]\nbase_url = "https://news.example.org/"\n'
        '[paths]\ndatabase = "syndicate.db"\n'
        '[mail]\nfrom = "News <news@example.org>"\n'
        'bounce_address = "bounces@news.example.org"\n',
        encoding="utf-8",
    )
    settings = load_settings(config, store_environ(), cwd=tmp_path)
    assert settings.mail.bounce_limit == 3  # one soft bounce does not stop the mail
    emails = [f"reader{i:02d}@example.net" for i in range(20)]
    with run_smtp_server() as inbox, run_postfix(inbox.port) as mta:
        for address in HARD:
            inbox.handler.refuse(address, f"550 5.1.1 <{address}>: no such user")
        inbox.handler.refuse(SOFT, "452 4.2.2 mailbox full")
        with open_store(settings.paths.database) as db:
            for address in emails:
                add_subscriber(db, address, now=NOW)
            _digest(db, DAY)
            # The MTA accepts all 20: the refusals come back later, as mail.
            assert await _send(db, settings, mta.port, DAY) == 20
            complainer = get_by_email(db, COMPLAINER)
            assert complainer is not None
            token = make_return_token(
                get_secret(settings, db),
                subscriber_id=complainer.id,
                nonce=complainer.token_nonce,
                day=DAY,
            )
        assert inbox.handler.wait_for(16, timeout=DEADLINE)
        reports = mta.wait_for_mail(4)
        # Every report went to its message's own VERP address.
        for path in reports:
            head = path.read_bytes().split(b"\n\n", 1)[0]
            assert b"Delivered-To: bounces+" in head
        # A mailbox provider's spam complaint arrives by mail, through the same MTA.
        verp = f"bounces+{token}@news.example.org"
        arf = (DATA / "bounces" / "microsoft-arf.eml").read_bytes()
        arf = arf.replace(b"bounces@news.example.org", verp.encode())
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as client:
            client.sendmail("staff@hotmail.com", [verp], arf)
        mta.wait_for_mail(5)
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(
            cli, ["--config", str(config), "bounces", str(mta.maildir)], catch_exceptions=False
        )
        assert (result.exit_code, result.stdout) == (
            0,
            "bounces: 3 hard, 1 soft, 1 complaint, 0 ignored, 0 unreadable\n",
        ), mta.log()[-3000:]
        assert not list((mta.maildir / "new").iterdir())

    with open_store(settings.paths.database) as db:
        statuses = {s.email: str(s.status) for s in iter_subscribers(db)}
        assert {a: s for a, s in statuses.items() if s != "confirmed"} == {
            **{address: "bounced" for address in HARD},
            COMPLAINER: "complained",
        }
        # 1 complaint in 20 messages: far over the providers' 0.3%.
        assert complaint_warning(recent_rates(db, now=datetime.now(UTC))) is not None
        _digest(db, NEXT_DAY)
        with run_smtp_server() as direct:
            assert await _send(db, settings, direct.port, NEXT_DAY) == 16
            assert sorted(direct.handler.recipients()) == sorted(
                set(emails) - set(HARD) - {COMPLAINER}
            )
            assert SOFT in direct.handler.recipients()
