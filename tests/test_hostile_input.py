"""Hostile and careless input through the real CLI: one clear line, a true exit code.

Each test runs `python -m syndicate` in a subprocess, as cron or an operator would, with
input an attacker or a slip of the keyboard could give it, and checks what is left behind.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import shutil
import stat
import struct
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from syndicate.store import open_database
from syndicate.store.subscribers import add_subscriber

SEEDS = Path(__file__).resolve().parent.parent / "seeds"


def _syndicate(
    cwd: Path,
    *args: str,
    stdin_closed: bool = False,
    stdin_from: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    most_memory: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, with no SYNDICATE_* variable but those of `env`.

    `most_memory` caps the process's data (heap and private mappings) at that many bytes,
    so a test of a bound on reading fails at once, not by filling the machine's memory.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")} | (env or {})

    def limit() -> None:
        if stdin_closed:
            os.close(0)
        if most_memory is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (most_memory, most_memory))

    with open(stdin_from or os.devnull, "rb") as stdin:
        return subprocess.run(
            [sys.executable, "-m", "syndicate", *args],
            cwd=cwd,
            env=env,
            stdin=None if stdin_closed else stdin,
            preexec_fn=limit if stdin_closed or most_memory is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("kind", ["folder", "text file"])
def test_a_database_path_naming_something_else_leaves_its_mode_alone(
    tmp_path: Path, kind: str
) -> None:
    # paths.database = "/tmp" (a slip for "/tmp/syndicate.db") took "others" off /tmp
    # itself, mode 1777 to 1770, breaking every other user's temporary files; pointed at
    # a text file it made that file unreadable to others before finding it no database.
    other = tmp_path / "shared"
    if kind == "folder":
        other.mkdir()
        other.chmod(0o755)
    else:
        other.write_text("not a database\n", encoding="utf-8")
        other.chmod(0o644)
    (tmp_path / "seeds").mkdir()
    (tmp_path / "syndicate.toml").write_text(f'[paths]\ndatabase = "{other}"\n', encoding="utf-8")
    done = _syndicate(tmp_path, "build")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"Error: {other}: ")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert _mode(other) in (0o755, 0o644)
    assert _mode(other) == (0o755 if kind == "folder" else 0o644)


def test_an_import_with_a_cell_too_big_for_csv_is_one_line_and_imports_nothing(
    tmp_path: Path,
) -> None:
    # A 200 kB cell (a pasted blob, a broken export) is over the csv module's field limit:
    # the import died with a traceback (exit 1) after storing the rows above it.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    rows = "email,name\nan@example.org,An\nbinh@example.org," + "x" * 200_000 + "\n"
    (tmp_path / "list.csv").write_text(rows + "chi@example.org,Chi\n", encoding="utf-8")
    done = _syndicate(tmp_path, "subscribers", "import", "list.csv")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("Error: list.csv line 3: not readable as CSV: ")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    listed = _syndicate(tmp_path, "subscribers", "list", "--json")
    assert (listed.returncode, listed.stdout) == (0, "")


def test_bounces_from_a_closed_standard_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # `syndicate bounces -` from a pipe set up wrong (cron, an MTA with stdin closed): the
    # command died with AttributeError and a traceback, exit 1.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    done = _syndicate(tmp_path, "bounces", "-", stdin_closed=True)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "Error: bounces: '-' reads standard input, but it is closed. "
        "Pipe one message into it, or give a Maildir, mbox or .eml file.\n"
    )


def test_a_mail_with_no_from_header_prints_no_traceback(tmp_path: Path) -> None:
    # Anyone can mail the bounce address. A mail with no From made one of flufl.bounce's
    # detectors raise, and flufl logged it with a traceback, which reached stderr (and cron's
    # mail to the operator) through logging's last-resort handler, on every run.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    mail = tmp_path / "odd.eml"
    mail.write_bytes(b"To: news@example.org\r\nSubject: hello\r\n\r\nJust text.\r\n")
    done = _syndicate(tmp_path, "bounces", str(mail))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "bounces: 0 hard, 0 soft, 0 complaints, 1 ignored, 0 unreadable\n"


def test_a_second_connection_in_one_process_keeps_the_first_ones_locks(
    tmp_path: Path, now: datetime
) -> None:
    # `serve` opens the store twice (a writer and a reader). Had opening it read the file
    # through a descriptor of its own, closing that descriptor would drop every POSIX lock
    # the process held on it: a CLI command that ended meanwhile then found itself the last
    # user, checkpointed and deleted the -wal under the server, and the server's next
    # writes (a confirmation answered "confirmed") went to a deleted file.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    with open_database(tmp_path / "s.db") as writer:
        add_subscriber(writer, "an@example.org", now=now)
        with open_database(tmp_path / "s.db", read_only=True):
            assert _syndicate(tmp_path, "subscribers", "list").returncode == 0
            add_subscriber(writer, "binh@example.org", now=now)
            listed = _syndicate(tmp_path, "subscribers", "list", "--json")
    assert [json.loads(line)["email"] for line in listed.stdout.splitlines()] == [
        "an@example.org",
        "binh@example.org",
    ]


@pytest.mark.parametrize("variable", ["SYNDICATE_SECRET", "SYNDICATE_SMTP_PASSWORD"])
def test_an_environment_variable_that_is_not_utf8_is_one_line_and_exit_2(
    tmp_path: Path, variable: str
) -> None:
    # A secret set from raw bytes (a key file's contents, a Latin-1 shell): making a
    # token died with UnicodeEncodeError and a traceback, exit 1.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    add = _syndicate(tmp_path, "subscribers", "add", "an@example.org")
    assert add.returncode == 0, add.stderr
    done = _syndicate(
        tmp_path,
        "unsubscribe-token",
        "make",
        "an@example.org",
        env={variable: "s3cret-\udcff"},  # the byte 0xff, as os.environ holds it
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"Error: environment variable {variable} is not UTF-8 text (its value is not "
        "shown). Set it again as UTF-8 text.\n"
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://news@127.0.0.1:99999/news", "invalid port number"),
        ("postgresql://news@127.0.0.1:1/news?sslmode=bogus", "invalid sslmode value"),
    ],
)
def test_a_store_url_with_a_value_libpq_refuses_is_exit_2_not_75(
    tmp_path: Path, url: str, reason: str
) -> None:
    # libpq checks these values before it connects; the command said "cannot reach the
    # database ... the next run tries again" with exit 75, so cron retried a typo forever.
    done = _syndicate(tmp_path, "subscribers", "stats", env={"SYNDICATE_STORE_URL": url})
    assert (done.returncode, done.stdout) == (2, "")
    where = url.removeprefix("postgresql://news@").partition("?")[0]
    assert done.stderr == (
        f"Error: PostgreSQL at {where}: the URL has a value libpq refuses: {reason}. "
        "Fix SYNDICATE_STORE_URL; trying again will not help until then.\n"
    )


def test_erasing_an_international_address_deletes_its_outbox_mails(tmp_path: Path) -> None:
    # The store keeps b@ví.vn as b@xn--v-jga.vn, and so do the mails' To headers; erase
    # compared the outbox with the address as typed, so the erased person's digest (their
    # address and personal unsubscribe link) stayed in the outbox, and nothing said so.
    shutil.copytree(SEEDS, tmp_path / "seeds")
    (tmp_path / "syndicate.toml").write_text(
        '[paths]\ndatabase = "s.db"\n[mail]\nfrom = "news@example.org"\n', encoding="utf-8"
    )
    for address in ("b@ví.vn", "an@example.org"):
        assert _syndicate(tmp_path, "subscribers", "add", address).returncode == 0
    sent = _syndicate(tmp_path, "send")
    assert sent.returncode == 0, sent.stderr
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 2
    done = _syndicate(tmp_path, "subscribers", "erase", "b@ví.vn")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "Deleted 1 outbox message to b@ví.vn."
    left = [p.read_bytes() for p in (tmp_path / "outbox").rglob("*.eml")]
    assert len(left) == 1
    assert b"xn--v-jga" not in left[0]


def _forged_return_token(subscriber_id: int) -> str:
    raw = struct.pack(">BQH", 1, subscriber_id, 9000) + bytes(10)  # version 1, no real tag
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def test_a_forged_bounce_naming_an_impossible_subscriber_is_ignored(tmp_path: Path) -> None:
    # Anyone can mail the bounce address. A return-path token naming subscriber 2**64 - 1
    # was looked up before its tag was checked: SQLite raised OverflowError, the run died
    # with a traceback, and the mail stayed in new/, so every later run died on it too and
    # no bounce was read again.
    (tmp_path / "syndicate.toml").write_text(
        '[paths]\ndatabase = "s.db"\n[mail]\nbounce_address = "bounces@example.org"\n',
        encoding="utf-8",
    )
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    token = _forged_return_token(2**64 - 1)
    (maildir / "new" / "1.forged").write_bytes(
        f"From: MAILER-DAEMON@mx.example.org\r\nTo: bounces+{token}@example.org\r\n"
        "Subject: Undelivered Mail\r\nMessage-ID: <forged@mx.example.org>\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        "Final-Recipient: rfc822; an@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "--B--\r\n".encode("ascii")
    )
    done = _syndicate(tmp_path, "bounces", str(maildir))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "bounces: 0 hard, 0 soft, 0 complaints, 1 ignored, 0 unreadable\n"
    assert not list((maildir / "new").iterdir())  # filed: the next run does not read it again


def test_a_custom_template_that_fails_while_rendering_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    # An operator's template with `{{ articles | length / 0 }}` or `{{ title + 1 }}`: the
    # syntax and the names were checked, but any other failure while rendering was a
    # traceback (exit 1) from `digest`, and from `send` before anything was sent.
    shutil.copytree(SEEDS, tmp_path / "seeds")
    templates = tmp_path / "mine"
    shutil.copytree(SEEDS.parent / "templates" / "email", templates)
    (templates / "digest.txt.j2").write_text("{{ 1 / 0 }}\n", encoding="utf-8")
    (tmp_path / "syndicate.toml").write_text(
        '[paths]\ndatabase = "s.db"\n[digest]\ntemplates_dir = "mine"\n', encoding="utf-8"
    )
    done = _syndicate(tmp_path, "digest", "--out", "preview")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"Error: config key digest.templates_dir ({str(templates)!r}): digest.txt.j2: "
        "rendering failed: ZeroDivisionError: division by zero. Fix the template; "
        "templates/email/ holds the shipped ones.\n"
    )
    assert not (tmp_path / "preview").exists()


def test_an_outbox_that_is_a_file_names_the_outbox_folder_not_paths_output(
    tmp_path: Path,
) -> None:
    # paths.outbox set to a file: the error's advice was to check paths.output, a setting
    # that had nothing to do with it. (It is refused before the send now: the line names
    # the setting.)
    shutil.copytree(SEEDS, tmp_path / "seeds")
    (tmp_path / "mail.txt").write_text("not a folder\n", encoding="utf-8")
    (tmp_path / "syndicate.toml").write_text(
        '[paths]\ndatabase = "s.db"\noutbox = "mail.txt"\n', encoding="utf-8"
    )
    assert _syndicate(tmp_path, "subscribers", "add", "an@example.org").returncode == 0
    done = _syndicate(tmp_path, "send")
    assert (done.returncode, done.stdout) == (2, "")
    mail = tmp_path / "mail.txt"
    assert done.stderr == (
        f"Error: config key paths.outbox: {mail} is not a folder. "
        "Give a folder this user can write to (or one it can make).\n"
    )


def test_a_listmonk_row_with_deeply_nested_attributes_is_one_rejected_row(
    tmp_path: Path,
) -> None:
    # listmonk's attributes column is JSON; 100,000 nested brackets made json.loads raise
    # RecursionError, not ValueError: a traceback, exit 1, and the rows after it not read.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    (tmp_path / "listmonk.csv").write_text(
        "uuid,email,name,attributes,status\n"
        "1,an@example.org,An,,enabled\n"
        f"2,deep@example.org,Deep,{'[' * 100_000},enabled\n"
        "3,chi@example.org,Chi,,enabled\n",
        encoding="utf-8",
    )
    done = _syndicate(tmp_path, "subscribers", "import", "listmonk.csv")
    assert done.returncode == 1
    assert done.stderr == (
        "listmonk.csv line 3, column attributes: attributes is not JSON. "
        "Fix the row and import the file again; the other rows are kept.\n"
    )
    assert done.stdout == "Imported 2, unchanged 0, rejected 1 (listmonk list).\n"


def test_a_fifo_in_a_maildir_is_skipped_not_waited_on(tmp_path: Path) -> None:
    # A named pipe in new/ (whoever can write the Maildir can make one): reading it waited
    # for a writer that never came, so the cron run hung, and each later run hung behind it.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    os.mkfifo(maildir / "new" / "1.pipe")
    (maildir / "new" / "2.mail").write_bytes(b"To: news@example.org\r\nSubject: hi\r\n\r\nHi.\r\n")
    done = _syndicate(tmp_path, "bounces", str(maildir), timeout=30)
    assert done.returncode == 1
    assert done.stderr == (
        f"warning: {maildir}/new/1.pipe: cannot read: not a regular file; left in place.\n"
    )
    assert done.stdout == "bounces: 0 hard, 0 soft, 0 complaints, 1 ignored, 1 unreadable\n"


@pytest.mark.parametrize(
    ("section", "key", "value", "most"),
    [
        ("digest", "max_age_hours", "1000000000", "1000000"),
        ("smtp", "lease", "1e300", "1000000000"),
    ],
)
def test_an_absurdly_large_number_in_the_config_is_one_line_and_exit_2(
    tmp_path: Path, section: str, key: str, value: str, most: str
) -> None:
    # A slip of the keyboard (or a unit mix-up) made `send` die with OverflowError and a
    # traceback, exit 1: a date a million centuries back, a lease SQLite cannot count.
    shutil.copytree(SEEDS, tmp_path / "seeds")
    (tmp_path / "syndicate.toml").write_text(
        f'[paths]\ndatabase = "s.db"\n[{section}]\n{key} = {value}\n', encoding="utf-8"
    )
    done = _syndicate(tmp_path, "send")
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.startswith(f"Error: config key {section}.{key} has value ")
    assert done.stderr.endswith(f"; expected at most {most}.\n")


@pytest.mark.parametrize(
    "sender",
    ["news@example.org, editor@example.org", "News <news@example.org>\\nBcc: evil@example.net"],
)
def test_a_mail_from_with_two_addresses_is_refused_before_sending(
    tmp_path: Path, sender: str
) -> None:
    # The envelope took the first address, but every digest's From header named them all
    # ("From: News <news@example.org>, evil@example.net"): mail that DMARC and most
    # receivers refuse, and a line break in the setting made a second address of its own.
    shutil.copytree(SEEDS, tmp_path / "seeds")
    (tmp_path / "syndicate.toml").write_text(
        f'[paths]\ndatabase = "s.db"\n[mail]\nfrom = "{sender}"\n', encoding="utf-8"
    )
    assert _syndicate(tmp_path, "subscribers", "add", "an@example.org").returncode == 0
    done = _syndicate(tmp_path, "send")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines()[-1].startswith("Error: config key mail.from has value ")
    assert done.stderr.endswith('; expected one address like "News <news@example.org>".\n')
    assert not (tmp_path / "outbox").exists()


_MALFORMED = (
    "; it is not a well-formed address (check its quotes and angle brackets; a name holding "
    ", : ; or @ goes in double quotes): "
)


@pytest.mark.parametrize(
    ("key", "value", "wrong"),
    [
        ("from", "not an address", '; expected an address like "News <news@example.org>".'),
        ("reply_to", "not an address", "; expected an address like 'editor@example.org'."),
        # An internationalised domain or local part: the line said only "expected an address
        # like ...", when the address was one, in letters a header cannot carry as such.
        (
            "from",
            "Tin Mới <tin@ví-dụ.vn>",
            "; its domain is not ASCII: write it in its xn-- form, tin@xn--v-d-rma6749a.vn.",
        ),
        (
            "reply_to",
            "biên-tập@example.org",
            "; its local part is not ASCII, which mail to it needs SMTPUTF8 for (syndicate does "
            "not send it): give an ASCII address.",
        ),
        (
            "bounce_address",
            "bounces+x@example.org",
            "; its local part may not hold '+' (the VERP delimiter). "
            "Use an address like 'bounces@news.example.org'.",
        ),
        (
            "mailto_unsubscribe",
            "unsubscribe",
            "; expected a plain ASCII address like 'unsubscribe@example.org'.",
        ),
        # A doubled '@' passed: every digest went out from 'b@+TOKEN@example.org' (no
        # bounce could come back), or with <mailto:u@@example.org?subject=unsubscribe>.
        (
            "bounce_address",
            "b@@example.org",
            "; expected a plain address like 'bounces@news.example.org'.",
        ),
        (
            "mailto_unsubscribe",
            "u@@example.org",
            "; expected a plain ASCII address like 'unsubscribe@example.org'.",
        ),
        # A '<' left open, a '>' never opened, words after the address: each was mended in
        # silence ("Tin <tin@example.org" went out as "Tin <tin@example.org>").
        (
            "from",
            "Tin <tin@example.org",
            _MALFORMED + 'expected one like "News <news@example.org>".',
        ),
        (
            "from",
            "<tin@example.org",
            _MALFORMED + 'expected one like "News <news@example.org>".',
        ),
        (
            "reply_to",
            "Ban biên tập <editor@example.org",
            _MALFORMED + "expected one like 'Editor <editor@example.org>'.",
        ),
        (
            "reply_to",
            "<editor@example.org",
            _MALFORMED + "expected one like 'Editor <editor@example.org>'.",
        ),
        # A colon in a name not in quotes makes the header a group ("Ban biên tập: Tin
        # <tin@example.org>;"): the reader's client shows no sender.
        (
            "from",
            "Ban biên tập: Tin <tin@example.org>",
            _MALFORMED + 'expected one like "News <news@example.org>".',
        ),
        (
            "bounce_address",
            "<bounces@example.org",
            "; expected a plain address like 'bounces@news.example.org'.",
        ),
        (
            "mailto_unsubscribe",
            "<unsubscribe@example.org>",
            "; expected a plain ASCII address like 'unsubscribe@example.org'.",
        ),
    ],
)
@pytest.mark.parametrize("command", [("send",), ("send", "--dry-run"), ("serve", "--port", "0")])
def test_a_bad_mail_address_key_is_refused_before_anything_is_made(
    tmp_path: Path, key: str, value: str, wrong: str, command: tuple[str, ...]
) -> None:
    # With the outbox transport (the default) `send` built the site, stored the day's digest
    # and wrote its page, then stopped at the first message with exit 2: a failed run that
    # left a store, feeds/ and a digest behind; `serve` took sign-ups it could not mail.
    shutil.copytree(SEEDS, tmp_path / "seeds")
    (tmp_path / "syndicate.toml").write_text(
        f'[paths]\ndatabase = "s.db"\n[mail]\n{key} = "{value}"\n', encoding="utf-8"
    )
    done = _syndicate(tmp_path, *command, timeout=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"Error: config key mail.{key} has value {value!r}{wrong}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seeds", "syndicate.toml"]


@pytest.mark.parametrize(
    ("key", "line"),
    [
        (
            "missing",
            "Error: config key dkim.key_file: '{path}' cannot be read: No such file or "
            "directory. Point it at the PEM private key of the selector.",
        ),
        (
            "readable",
            "Error: dkim.key_file {path}: readable by others (mode 0644); run chmod 600 {path}.",
        ),
        ("not pem", "Error: config key dkim.key_file: '{path}' is not a PEM private key."),
    ],
)
@pytest.mark.parametrize("command", [("send",), ("send", "--dry-run"), ("serve", "--port", "0")])
def test_an_unusable_dkim_key_is_refused_before_anything_is_made(
    tmp_path: Path, key: str, line: str, command: tuple[str, ...]
) -> None:
    # The key was read at the first message: `send` had built the site and stored the day's
    # digest, then exited 2; `serve` made the store, then stopped.
    shutil.copytree(SEEDS, tmp_path / "seeds")
    pem = tmp_path / "dkim.pem"
    if key != "missing":
        pem.write_text(
            "-----BEGIN PRIVATE KEY-----\n" if key == "readable" else "hello\n", encoding="ascii"
        )
        pem.chmod(0o644 if key == "readable" else 0o600)
    (tmp_path / "syndicate.toml").write_text(
        '[paths]\ndatabase = "s.db"\n'
        '[dkim]\ndomain = "example.org"\nselector = "s1"\nkey_file = "dkim.pem"\n',
        encoding="utf-8",
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    done = _syndicate(tmp_path, *command, timeout=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == line.format(path=pem) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("broken", "line"),
    [
        (
            "missing",
            "template 'digest.html.j2' is missing. Copy templates/email/ from "
            "syndicate, or leave digest.templates_dir empty.",
        ),
        ("syntax", "confirm.txt.j2 line 1: unexpected 'end of template'. Fix the template syntax."),
    ],
)
@pytest.mark.parametrize("command", [("send",), ("send", "--dry-run"), ("serve", "--port", "0")])
def test_broken_email_templates_are_refused_before_anything_is_made(
    tmp_path: Path, broken: str, line: str, command: tuple[str, ...]
) -> None:
    # A digest.templates_dir without the templates (a typo in the path), or one of them not
    # valid Jinja, was found when the first message was rendered: `send` had built the site
    # and stored the day's digest; `serve` took sign-ups and failed to mail each.
    shutil.copytree(SEEDS, tmp_path / "seeds")
    folder = tmp_path / "tpl"
    shutil.copytree(Path(__file__).resolve().parent.parent / "templates" / "email", folder)
    if broken == "missing":
        (folder / "digest.html.j2").unlink()
    else:
        (folder / "confirm.txt.j2").write_text("{{ nope(\n", encoding="utf-8")
    (tmp_path / "syndicate.toml").write_text(
        '[paths]\ndatabase = "s.db"\n[digest]\ntemplates_dir = "tpl"\n', encoding="utf-8"
    )
    done = _syndicate(tmp_path, *command, timeout=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"Error: config key digest.templates_dir ({str(folder)!r}): {line}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seeds", "syndicate.toml", "tpl"]


@pytest.mark.parametrize("workers", ["65", "1000"])
def test_send_with_too_many_workers_is_a_usage_error(tmp_path: Path, workers: str) -> None:
    # `--workers 1000` (a slip for 10) started 1000 processes, each opening
    # smtp.connections SMTP connections and its own store connections. `--dry-run` keeps
    # this test cheap should the bound ever go: click checks options before the command.
    (tmp_path / "seeds").mkdir()
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    done = _syndicate(tmp_path, "send", "--dry-run", "--workers", workers)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--workers': {workers} is not in the range 1<=x<=64."
    )
    assert _syndicate(tmp_path, "send", "--dry-run", "--workers", "64").returncode == 0


@pytest.mark.parametrize("seconds", ["nan", "inf", "-1", "0", "1e300"])
def test_preflight_with_a_timeout_that_never_ends_is_a_usage_error(
    tmp_path: Path, seconds: str
) -> None:
    # click's FloatRange lets nan through (every comparison with it is false), and inf or
    # 1e300 are above the least: each DNS look-up then waited for ever on a silent server.
    (tmp_path / "syndicate.toml").write_text(
        '[paths]\ndatabase = "s.db"\n[mail]\nfrom = "news@example.org"\n', encoding="utf-8"
    )
    done = _syndicate(
        tmp_path, "preflight", "--nameserver", "127.0.0.1:9", "--timeout", seconds, timeout=30
    )
    assert (done.returncode, done.stdout) == (2, "")
    wrong = "a number of seconds" if seconds == "nan" else "in the range 0.1<=x<=600"
    assert done.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--timeout': {float(seconds)} is not {wrong}."
    )


@pytest.mark.parametrize(
    ("config", "args", "line"),
    [
        (
            "",
            (),
            "Error: config key mail.from has value ''; preflight checks the sender's domain. "
            'Set it, like from = "News <news@example.org>".',
        ),
        (
            '[mail]\nfrom = "news@example.org"\n',
            ("--nameserver", "dns.example.org"),
            "Error: --nameserver 'dns.example.org': 'dns.example.org' is not an IP address. "
            "Give an IP address and an optional port, like 127.0.0.1:5353.",
        ),
    ],
)
def test_preflight_refused_at_once_makes_no_store(
    tmp_path: Path, config: str, args: tuple[str, ...], line: str
) -> None:
    # Both were found only after the dumps had been read into a new store: the embedded
    # defaults (no mail.from) or a host name given for --nameserver left syndicate.db behind.
    shutil.copytree(SEEDS, tmp_path / "seeds")
    (tmp_path / "syndicate.toml").write_text(config, encoding="utf-8")
    done = _syndicate(tmp_path, "preflight", *args, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", line + "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seeds", "syndicate.toml"]


@pytest.mark.parametrize("option", ["--to", "--dry-run --to"])
def test_send_to_a_bad_address_makes_no_store(tmp_path: Path, option: str) -> None:
    # The address was checked once the store was open: a typo left syndicate.db behind.
    shutil.copytree(SEEDS, tmp_path / "seeds")
    done = _syndicate(tmp_path, "send", *option.split(), "an@@example.org")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "Error: email address 'an@@example.org' is not valid: The part after the @-sign "
        "contains invalid characters: '@'. Check it for typos.\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seeds"]


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("missing.eml", "missing.eml: no such file or folder. Give a Maildir, mbox or .eml file."),
        (
            "seeds",
            "seeds: a folder but not a Maildir (no cur/ and new/). "
            "Give a Maildir, an mbox file or an .eml file.",
        ),
    ],
)
def test_bounces_refusing_its_path_makes_no_store(tmp_path: Path, path: str, line: str) -> None:
    # The paths were checked on the first read, after the store had been opened: a typo in
    # a cron line left a new, empty syndicate.db behind on each run.
    (tmp_path / "seeds").mkdir()
    done = _syndicate(tmp_path, "bounces", path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"Error: {line}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seeds"]


@pytest.mark.parametrize(
    ("given", "kind"),
    [
        ("--config", "named pipe"),
        ("SYNDICATE_CONFIG", "named pipe"),
        ("./syndicate.toml", "named pipe"),
        ("a link given to --config", "named pipe"),
        ("SYNDICATE_CONFIG", "folder"),
        ("./syndicate.toml", "folder"),
        ("SYNDICATE_CONFIG", "device"),
    ],
)
def test_a_config_file_that_is_not_a_regular_file_is_one_line_and_exit_2(
    tmp_path: Path, given: str, kind: str
) -> None:
    # A named pipe as the config file: reading it waited for a writer that never came, so
    # every cron run hung. A device was read as it was (/dev/zero for ever, /dev/null as an
    # empty file); a folder at ./syndicate.toml was passed over in silence, defaults used.
    work = tmp_path / "work"
    work.mkdir()
    target = work / "syndicate.toml" if given == "./syndicate.toml" else tmp_path / "conf"
    if kind == "named pipe":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    else:
        target = Path(os.devnull)
    named = target
    if given.startswith("a link"):
        named = tmp_path / "link.toml"
        named.symlink_to(target)
    args = ["--config", str(named)] if given.endswith("--config") else []
    env = {"SYNDICATE_CONFIG": str(named)} if given == "SYNDICATE_CONFIG" else {}
    done = _syndicate(work, *args, "subscribers", "list", env=env, timeout=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(
        f"Error: config file {str(named)!r} is a {kind}, not a regular file. "
    )
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert list(work.iterdir()) == ([target] if target.parent == work else [])


_OVER_THE_CAP = "cannot read: over 10 MiB, more than a bounce or complaint report holds"


@pytest.mark.parametrize("source", [".eml file", "mbox", "Maildir", "standard input"])
def test_a_mail_over_the_size_cap_is_one_warning_and_never_read_whole(
    tmp_path: Path, source: str
) -> None:
    # A 1 GiB message (sparse: cheap to make) was read whole into memory, then parsed, and
    # an mbox's lines were read whole to find where each message starts. Capped at 512 MiB
    # of memory, the command now reads at most 10 MiB of it and says so on one line.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    small = b"To: news@example.org\nSubject: hi\n\nHi.\n"
    big = tmp_path / "big.eml"
    args = [str(big)]
    label = str(big)
    if source == "mbox":
        big = tmp_path / "big.mbox"
        big.write_bytes(b"From a@example.org Thu Jan  1 00:00:00 2026\n" + small)
        with big.open("ab") as out:  # the second message: 1 GiB with no line break
            out.write(b"\nFrom b@example.org Thu Jan  1 00:00:00 2026\nSubject: big\n\n")
        args, label = [str(big)], f"{big} message 2"
    elif source == "Maildir":
        maildir = tmp_path / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        big = maildir / "new" / "1.big"
        (maildir / "new" / "2.small").write_bytes(small)
        args, label = [str(maildir)], str(big)
    elif source == "standard input":
        args, label = ["-"], "<stdin>"
    with big.open("ab") as out:
        out.truncate(2**30)
    done = _syndicate(
        tmp_path,
        "bounces",
        *args,
        stdin_from=big if source == "standard input" else None,
        most_memory=512 * 2**20,
        timeout=30,
    )
    kept = "exit 1: the mail server returns it" if source == "standard input" else "left in place"
    assert (done.returncode, done.stderr) == (1, f"warning: {label}: {_OVER_THE_CAP}; {kept}.\n")
    ignored = 0 if source in (".eml file", "standard input") else 1
    assert done.stdout == (
        f"bounces: 0 hard, 0 soft, 0 complaints, {ignored} ignored, 1 unreadable\n"
    )
    assert big.exists()  # left in place (a Maildir's in new/)


@pytest.mark.parametrize("kind", ["named pipe", "device"])
def test_bounces_given_a_named_pipe_or_a_device_is_one_line_and_exit_2(
    tmp_path: Path, kind: str
) -> None:
    # `bounces /dev/zero` read for ever into memory; a named pipe waited for a writer.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    path = Path("/dev/zero")
    if kind == "named pipe":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    done = _syndicate(tmp_path, "bounces", str(path), most_memory=512 * 2**20, timeout=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"Error: {path}: a {kind}, not a file or a Maildir. Give a Maildir, mbox or .eml file.\n"
    )


_STRANGER = b"From: postmaster@mx.example.org\nTo: bounces@example.org\nSubject: x\n\n"


@pytest.mark.parametrize(
    "body",
    [
        # flufl.bounce's heuristic detectors: once a notice line matched, some search every
        # later line for "(?P<addr>[^\s@]+@[^\s@]+)", in time quadratic in the line's
        # length (40 kB: 5 s; 9 MiB: days).
        b"Your message could not be delivered to\n" + b"a" * 2**20 + b"\n",
        # Each of their ~50 pattern sets goes over every body line once: 10 million empty
        # lines were minutes of CPU. Under the most lines a mail is read with (MAX_LINES),
        # all of them took 5 s of CPU here; the first 2,000 take 0.2 s.
        (b"x" * 50 + b"\n") * 199_000,
    ],
    ids=["one long line", "199,000 lines"],
)
def test_a_stranger_s_mail_built_to_slow_the_bounce_heuristics_does_not_hang_the_run(
    tmp_path: Path, body: bytes
) -> None:
    # Anyone can mail the bounce address: one such mail in new/ hung every cron run.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    mail = tmp_path / "slow.eml"
    mail.write_bytes(_STRANGER + body)
    done = _syndicate(tmp_path, "bounces", str(mail), timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "bounces: 0 hard, 0 soft, 0 complaints, 1 ignored, 0 unreadable\n"


def test_a_stranger_s_mail_of_ninety_thousand_mime_parts_is_one_warning_and_little_memory(
    tmp_path: Path,
) -> None:
    # 10 MiB of empty MIME parts ("--B\n\n" each) took 130 s of CPU and 680 MB of memory
    # to parse and walk. A report has a dozen parts: past 1000 the mail is not read on.
    # (Here 90,000 of them: two lines each, under the most lines a mail is read with.)
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    mail = tmp_path / "parts.eml"
    mail.write_bytes(
        _STRANGER.replace(b"\n\n", b'\nContent-Type: multipart/mixed; boundary="B"\n\n')
        + b"--B\n\n" * 90_000
        + b"--B--\n"
    )
    done = _syndicate(tmp_path, "bounces", str(mail), most_memory=256 * 2**20, timeout=60)
    assert (done.returncode, done.stdout) == (
        1,
        "bounces: 0 hard, 0 soft, 0 complaints, 0 ignored, 1 unreadable\n",
    )
    assert done.stderr == (
        f"warning: {mail}: not a readable mail: it has over 1000 MIME parts, more than a "
        "bounce or complaint report holds; left in place.\n"
    )


def test_a_stranger_s_mail_puts_no_escape_sequence_or_line_of_its_own_on_the_terminal(
    tmp_path: Path,
) -> None:
    # `bounces -v` logs why it ignored a mail, with text from the mail: a Feedback-Type
    # holding an escape sequence (here OSC 0, which retitles the terminal, and ED 2) went to
    # the terminal raw, and a folded one printed a second line that looked like syndicate's.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    mail = tmp_path / "odd.eml"
    mail.write_bytes(
        b"From: fbl@mx.example.org\nTo: bounces@example.org\nSubject: report\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="B"\n\n'
        b"--B\nContent-Type: message/feedback-report\n\n"
        b"Feedback-Type: \x1b]0;owned\x07\x1b[2J\n warning: an@example.org unsubscribed\n"
        b"\n--B--\n"
    )
    done = _syndicate(tmp_path, "-v", "bounces", str(mail))
    assert (done.returncode, done.stdout) == (
        0,
        "bounces: 0 hard, 0 soft, 0 complaints, 1 ignored, 0 unreadable\n",
    )
    assert done.stderr == (
        f"{mail}: ignored (feedback \\x1b]0;owned\\x07\\x1b[2j\\n warning: "
        "an@example.org unsubscribed)\n"
    )


def _weak_secret_warning(where: str) -> str:
    return (
        f"warning: {where} is 1 byte long: anyone who guesses it can forge sign-up, "
        "confirm and unsubscribe tokens. Set it to 16 bytes or more (like the output of "
        "`openssl rand -base64 32`), or unset it to use the one syndicate makes; either "
        "way, the links in mail already sent stop working."
    )


@pytest.mark.parametrize("source", ["SYNDICATE_SECRET", "mail.secret"])
def test_a_short_signing_secret_is_warned_about_once_per_command(
    tmp_path: Path, source: str
) -> None:
    # mail.secret = "x" was taken in silence: the sign-up form's tokens, and every confirm
    # and unsubscribe link, could be forged by guessing it. Refusing it would break the
    # links in mail already sent, so it is one warning line, once however often it is used.
    shutil.copytree(SEEDS, tmp_path / "seeds")
    config = '[paths]\ndatabase = "s.db"\n[mail]\nfrom = "news@example.org"\n'
    env = {"SYNDICATE_SECRET": "x"} if source == "SYNDICATE_SECRET" else {}
    if source == "mail.secret":
        config += 'secret = "x"\n'
    (tmp_path / "syndicate.toml").write_text(config, encoding="utf-8")
    (tmp_path / "syndicate.toml").chmod(0o600)  # else also warned about: others may read it
    where = "environment variable SYNDICATE_SECRET" if env else "config key mail.secret"
    warning = _weak_secret_warning(where)
    for address in ("an@example.org", "binh@example.org"):
        added = _syndicate(tmp_path, "subscribers", "add", address, env=env)
        assert (added.returncode, added.stderr) == (0, warning + "\n")
    sent = _syndicate(tmp_path, "send", env=env)  # the secret signs both digests' links
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr.splitlines().count(warning) == 1, sent.stderr
    # Under -q as cron runs it, too: its mail is where the operator would see it.
    quiet = _syndicate(tmp_path, "-q", "send", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.splitlines().count(warning) == 1, quiet.stderr
    made = _syndicate(tmp_path, "unsubscribe-token", "make", "an@example.org", env=env)
    assert (made.returncode, made.stderr) == (0, warning + "\n")


@pytest.mark.parametrize("secret", ["", "0123456789abcdef"])
def test_a_generated_or_long_enough_signing_secret_is_not_warned_about(
    tmp_path: Path, secret: str
) -> None:
    (tmp_path / "syndicate.toml").write_text(
        f'[paths]\ndatabase = "s.db"\n[mail]\nsecret = "{secret}"\n', encoding="utf-8"
    )
    (tmp_path / "syndicate.toml").chmod(0o600)  # else warned about: others may read it
    assert _syndicate(tmp_path, "subscribers", "add", "an@example.org").stderr == ""
    made = _syndicate(tmp_path, "unsubscribe-token", "make", "an@example.org")
    assert (made.returncode, made.stderr) == (0, "")


@pytest.mark.parametrize("key", ["busy_timeout", "reply_timeout"])
def test_a_store_timeout_past_what_sqlite_and_postgresql_count_is_one_line_and_exit_2(
    tmp_path: Path, key: str
) -> None:
    # Both are handed on in milliseconds as a C int (SQLite's busy_timeout, PostgreSQL's
    # lock_timeout and statement_timeout): 3,000,000 s (35 days) passed the config, and
    # SQLite took it as 0, so a command met by another's write lock failed at once instead
    # of waiting; PostgreSQL refused the setting. At most 2,147,483 s (24.8 days).
    shutil.copytree(SEEDS, tmp_path / "seeds")
    other = "reply_timeout = 0" if key == "busy_timeout" else "busy_timeout = 5"
    (tmp_path / "syndicate.toml").write_text(
        f'[paths]\ndatabase = "s.db"\n[store]\n{key} = 3000000\n{other}\n', encoding="utf-8"
    )
    done = _syndicate(tmp_path, "send")
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr == (
        f"Error: config key store.{key} has value 3000000; expected at most 2147483.\n"
    )


def test_a_stranger_s_mail_of_five_million_short_lines_is_one_warning_and_little_memory(
    tmp_path: Path,
) -> None:
    # 10 MiB of two-byte lines ("x\n") took 450 MB to parse: the parser keeps each line as
    # an object of its own. A bounce or complaint report, even one that returns a 10 MiB
    # message in base64, is under 200,000 lines: past that the mail is not read on.
    (tmp_path / "syndicate.toml").write_text('[paths]\ndatabase = "s.db"\n', encoding="utf-8")
    mail = tmp_path / "lines.eml"
    mail.write_bytes(_STRANGER + b"x\n" * 5_000_000)
    done = _syndicate(tmp_path, "bounces", str(mail), most_memory=256 * 2**20, timeout=60)
    assert (done.returncode, done.stdout) == (
        1,
        "bounces: 0 hard, 0 soft, 0 complaints, 0 ignored, 1 unreadable\n",
    )
    assert done.stderr == (
        f"warning: {mail}: not a readable mail: it has over 200000 lines, more than a "
        "bounce or complaint report holds; left in place.\n"
    )
