"""Bounces end to end through a real MTA: Debian's Postfix, started by the test with its own
config directory, relays the digest to aiosmtpd (which refuses some recipients), writes the
DSNs itself and delivers them, with a spam complaint, to a Maildir `syndicate bounces` reads.
"""

from __future__ import annotations

import shutil
import smtplib
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from syndicate.cli import cli
from syndicate.config import load_settings
from syndicate.store.bounces import complaint_warning, recent_rates
from syndicate.store.meta import get_secret
from syndicate.store.subscribers import add_subscriber, get_by_email, iter_subscribers
from syndicate.tokens import make_return_token
from tests.conftest import DATA
from tests.plugins.postfix import DEADLINE, NOW, add_digest, run_postfix, send_day
from tests.plugins.postgres import open_store, store_environ
from tests.plugins.smtp import run_smtp_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("postfix") is None, reason="Postfix is not installed"),
    pytest.mark.usefixtures("store"),
]

DAY = date(2024, 11, 1)
NEXT_DAY = date(2024, 11, 2)
HARD = ("reader03@example.net", "reader07@example.net", "reader11@example.net")
SOFT = "reader15@example.net"
COMPLAINER = "reader18@example.net"


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
            add_digest(db, DAY)
            # The MTA accepts all 20: the refusals come back later, as mail.
            assert await send_day(db, settings, mta.port, DAY) == 20
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
        add_digest(db, NEXT_DAY)
        with run_smtp_server() as direct:
            assert await send_day(db, settings, direct.port, NEXT_DAY) == 16
            assert sorted(direct.handler.recipients()) == sorted(
                set(emails) - set(HARD) - {COMPLAINER}
            )
            assert SOFT in direct.handler.recipients()
