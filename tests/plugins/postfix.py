"""A private Postfix for the tests: Debian's Postfix with a config and queue directory of its
own, listening on 127.0.0.1 only, relaying everything to a test SMTP server.

`run_postfix` starts one and stops it after; `settings` adds to or overrides its main.cf,
`services` adds master.cf entries (as `postconf -M` takes them: "name/type=entry").
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from syndicate.config import Settings
from syndicate.digest import RenderedEmail
from syndicate.mail import MailInfo, MessageTemplate, build_digest_template
from syndicate.send import SmtpMailer, send_digest
from syndicate.store import Database
from syndicate.store.meta import get_secret
from tests.plugins.smtp import free_port

# How long Postfix may take to relay 20 messages and write 4 DSNs on a busy machine.
DEADLINE = 60.0


@dataclass
class Postfix:
    root: Path
    port: int
    maildir: Path

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    def postfix(self, *args: str) -> None:
        subprocess.run(
            ["postfix", "-c", str(self.etc), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def postqueue(self, *args: str) -> str:
        done = subprocess.run(
            ["postqueue", "-c", str(self.etc), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout

    def queued(self) -> int:
        """How many messages are in the queue (any state)."""
        return sum(1 for line in self.postqueue("-j").splitlines() if line.strip())

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else "(no maillog)"

    def wait_for_log(self, text: str, count: int = 1, *, since: int = 0) -> list[str]:
        """Wait until the maillog, from character `since` on, has `count` lines holding
        `text`; return those lines."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            lines = [line for line in self.log()[since:].splitlines() if text in line]
            if len(lines) >= count:
                return lines
            time.sleep(0.1)  # the maillog has no event to wait on: poll it
        pytest.fail(f"Postfix logged {text!r} fewer than {count} times:\n{self.log()[-4000:]}")

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
def run_postfix(
    relay_port: int,
    *,
    settings: Mapping[str, str] = {},
    services: Sequence[str] = (),
) -> Iterator[Postfix]:
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
    main = {
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
        **settings,
    }
    (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
    _postconf(etc, "-M#", "smtp/inet")
    _postconf(etc, "-M", f"127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - smtpd")
    for service in services:
        _postconf(etc, "-M", service)
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


NOW = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)
MARKER = "https://marker.syndicate.invalid/unsubscribe?token=MARKER-1"


def templates(settings: Settings, day: date) -> dict[str, MessageTemplate]:
    rendered = RenderedEmail(
        lang="vi",
        subject="Bản tin",
        preheader="",
        html=f'<p><a href="{MARKER}">Hủy đăng ký</a></p>\n',
        text=f"Hủy đăng ký: {MARKER}\n",
    )
    template = build_digest_template(
        rendered,
        info=MailInfo.from_settings(settings),
        digest_day=day,
        marker=MARKER,
        now=NOW,
        message_key=None,
    )
    return {"vi": template}


def add_digest(db: Database, day: date) -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
            (day.isoformat(), f"{day.isoformat()}T06:00:00+00:00"),
        )


async def send_day(db: Database, settings: Settings, port: int, day: date) -> int:
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
        templates=templates(settings, day),
        settings=settings,
        secret=get_secret(settings, db),
        day=day,
        now=NOW,
    )
    return summary.sent
