"""`syndicate subscribers ...` through CliRunner: exact lines and exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from syndicate.cli import cli
from syndicate.config import load_settings
from syndicate.model import SubscriptionStatus
from syndicate.store import Database
from syndicate.store.lists import IMPORT_BATCH
from syndicate.store.subscribers import get_by_email, set_status, signup
from tests.plugins.postgres import ENV_STORE_URL, open_store

pytestmark = pytest.mark.usefixtures("store")


@pytest.fixture
def project(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    monkeypatch.delenv("SYNDICATE_SECRET", raising=False)
    return workdir


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_add_list_and_stats(project: Path) -> None:
    assert _run("subscribers", "add", "An@Example.ORG", "--name", "Ân") == (
        0,
        "Added An@example.org (id 1, vi).\n",
        "",
    )
    assert _run("subscribers", "add", "bob@example.org", "--lang", "en")[1] == (
        "Added bob@example.org (id 2, en).\n"
    )
    assert _run("subscribers", "add", "an@example.org") == (
        0,
        "An@example.org is already subscribed (id 1).\n",
        "",
    )
    code, out, _ = _run("subscribers", "list")
    assert code == 0
    assert out == "1\tAn@example.org\tvi\tconfirmed  Ân\n2\tbob@example.org\ten\tconfirmed\n"
    code, out, _ = _run("subscribers", "list", "--json", "--status", "confirmed")
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["id"], r["email"], r["name"], r["status"]) for r in records] == [
        (1, "An@example.org", "Ân", "confirmed"),
        (2, "bob@example.org", None, "confirmed"),
    ]
    code, out, _ = _run("subscribers", "stats")
    assert out.splitlines()[:7] == [
        "pending: 0",
        "confirmed: 2",
        "unsubscribed: 0",
        "bounced: 0",
        "complained: 0",
        "total: 2",
        "erased: 0",
    ]
    counts = json.loads(_run("subscribers", "stats", "--json")[1])
    assert {k: v for k, v in counts.items() if k != "rates"} == {
        "pending": 0,
        "confirmed": 2,
        "unsubscribed": 0,
        "bounced": 0,
        "complained": 0,
        "total": 2,
        "erased": 0,
    }


def test_add_refuses_a_bad_address_in_one_line(project: Path) -> None:
    code, out, err = _run("subscribers", "add", "an@@example.org")
    assert (code, out) == (2, "")
    assert err.startswith("Error: email address 'an@@example.org' is not valid: ")
    assert err.endswith(" Check it for typos.\n")
    assert err.count("\n") == 1


def test_remove_unsubscribes_and_keeps_the_address_out(project: Path) -> None:
    _run("subscribers", "add", "an@example.org")
    assert _run("subscribers", "remove", "AN@example.org") == (
        0,
        "Unsubscribed an@example.org.\n",
        "",
    )
    assert _run("subscribers", "remove", "an@example.org")[1] == (
        "an@example.org was already unsubscribed.\n"
    )
    code, _, err = _run("subscribers", "add", "an@example.org")
    assert code == 2
    assert err == (
        "Error: email address 'an@example.org' is already stored with status unsubscribed. "
        "Only the person can subscribe again, through the sign-up form.\n"
    )
    assert _run("subscribers", "list", "--status", "unsubscribed")[1].startswith(
        "1\tan@example.org"
    )
    assert _run("subscribers", "remove", "nobody@example.org") == (
        2,
        "",
        "Error: email address 'nobody@example.org' is not a subscriber. "
        "Check it against `syndicate subscribers list`.\n",
    )


def test_import_keeps_good_rows_reports_bad_ones_and_is_idempotent(project: Path) -> None:
    csv_file = project / "list.csv"
    csv_file.write_text(
        "email,name,language\n"
        "an@example.org,Ân,vi\n"
        "not-an-address,X,vi\n"
        "bob@example.org,,en\n"
        "\n"
        'cee@example.org,"Nguyễn, Cê",fr\n'
        "dee@example.org,Dee,\n",
        encoding="utf-8-sig",
    )
    code, out, err = _run("subscribers", "import", str(csv_file))
    assert code == 1
    assert out == "Imported 3, unchanged 0, rejected 2 (syndicate list).\n"
    lines = err.splitlines()
    assert lines[0].startswith(
        f"{csv_file} line 3, column email: email address 'not-an-address' is not valid"
    )
    assert lines[0].endswith(" Check it for typos.")
    assert lines[1] == (
        f"{csv_file} line 6, column language: language 'fr' is not supported; expected 'vi' "
        "or 'en'. Fix the row and import the file again; the other rows are kept."
    )
    code, out, _ = _run("subscribers", "import", str(csv_file))
    assert out == "Imported 0, unchanged 3, rejected 2 (syndicate list).\n"
    listed = _run("subscribers", "list")[1]
    assert listed.splitlines() == [
        "1\tan@example.org\tvi\tconfirmed  Ân",
        "2\tbob@example.org\ten\tconfirmed",
        "3\tdee@example.org\tvi\tconfirmed  Dee",
    ]


def test_import_refuses_a_file_without_the_header(project: Path) -> None:
    csv_file = project / "list.csv"
    csv_file.write_text("an@example.org,An,vi\n", encoding="utf-8")
    code, _, err = _run("subscribers", "import", str(csv_file))
    assert code == 2
    assert err == (
        f"Error: {csv_file} line 1: the header has no email column (the header is "
        "['an@example.org', 'An', 'vi']); expected syndicate's own (email,name,language,status; "
        "only email is required), or an export of listmonk, Mailchimp or Substack. "
        "Fix the header line, or export the list again from its tool.\n"
    )
    csv_file.write_text("email,name,langauge\nan@example.org,An,en\n", encoding="utf-8")
    code, _, err = _run("subscribers", "import", str(csv_file))
    assert code == 2
    assert err.startswith(
        f"Error: {csv_file} line 1: the header has columns syndicate does not know: 'langauge'; "
    )
    assert _run("subscribers", "list")[1] == (
        "No subscribers yet. Add one with `syndicate subscribers add EMAIL`.\n"
    )
    assert _run("subscribers", "import", "missing.csv") == (
        2,
        "",
        "Error: missing.csv: no such file. Give the path of a CSV file.\n",
    )


def test_export_writes_every_subscriber(project: Path) -> None:
    _run("subscribers", "add", "an@example.org", "--name", "Nguyễn, Ân")
    _run("subscribers", "add", "bob@example.org", "--lang", "en")
    _run("subscribers", "remove", "bob@example.org")
    out_file = project / "out" / "export.csv"
    assert (
        _run("subscribers", "export", str(out_file))[1]
        == f"Exported 2 subscribers to {out_file}.\n"
    )
    assert out_file.read_text(encoding="utf-8") == (
        "email,name,language,status\n"
        'an@example.org,"Nguyễn, Ân",vi,confirmed\n'
        "bob@example.org,,en,unsubscribed\n"
    )


def test_export_to_a_dash_writes_the_csv_to_standard_output(project: Path) -> None:
    # `export -` wrote a file named "-" in the current folder.
    _run("subscribers", "add", "an@example.org", "--name", "Nguyễn Ân")
    assert _run("subscribers", "export", "-") == (
        0,
        "email,name,language,status\nan@example.org,Nguyễn Ân,vi,confirmed\n",
        "Exported 1 subscribers to standard output.\n",
    )
    assert not (project / "-").exists()


@pytest.mark.parametrize("target", ["fifo", "link to /dev/null", "link to a fifo"])
def test_export_refuses_a_path_that_is_no_file_and_leaves_it_as_it_was(
    project: Path, target: str
) -> None:
    # The export renames a new file into place: run as root, `export /dev/stdout` made
    # /dev/stdout (a link to /proc/self/fd/1) a file for every later process on the machine.
    # Here a link of the test's own to /dev/null stands for it, and a pipe for a device.
    _run("subscribers", "add", "an@example.org")
    fifo = project / "pipe"
    os.mkfifo(fifo)
    path = fifo
    if target.startswith("link"):
        path = project / "out.csv"
        path.symlink_to("/dev/null" if target == "link to /dev/null" else fifo)
    code, out, err = _run("subscribers", "export", str(path))
    assert (code, out) == (2, "")
    assert err == (
        f"Error: {path} is not a regular file: the export writes a new file in its place. "
        "Give a file path, or - to write the CSV to standard output.\n"
    )
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    if target.startswith("link"):
        assert path.is_symlink()


def test_export_refuses_a_link_to_an_open_file_of_this_process(project: Path) -> None:
    # /dev/stdout is such a link (to /proc/self/fd/1): with stdout sent to a file
    # (`export /dev/stdout > backup.csv`, as cron runs it), it passed the check for a
    # regular file, and the export, run as root, made /dev/stdout a file of its own (the
    # list in it, for every later process). Here a link of the test's own stands for it.
    _run("subscribers", "add", "an@example.org")
    with (project / "backup.csv").open("wb") as redirected:
        path = project / "stdout"
        path.symlink_to(f"/proc/self/fd/{redirected.fileno()}")
        code, out, err = _run("subscribers", "export", str(path))
    assert (code, out) == (2, "")
    assert err == (
        f"Error: {path} is a link to a file this process has open: the export writes a new "
        "file in its place. Give a file path, or - to write the CSV to standard output.\n"
    )
    assert path.is_symlink()
    assert (project / "backup.csv").read_bytes() == b""


def test_export_to_a_dash_on_a_full_disk_is_one_line(project: Path) -> None:
    # Standard output that cannot take the CSV (a full disk): a traceback, exit 1.
    _run("subscribers", "add", "an@example.org")
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "syndicate", "subscribers", "export", "-"],
            stdout=full,
            stderr=subprocess.PIPE,
            check=False,
        )
    assert (done.returncode, done.stderr.decode()) == (
        75,
        "Error: standard output: cannot write the CSV: No space left on device. "
        "Send it to a disk with room, or give a file path instead of -.\n",
    )


def test_export_to_a_dash_with_standard_output_closed_is_one_line(project: Path) -> None:
    # `export - >&-` (a job started with its standard output closed): Python has no
    # sys.stdout then, and the export ended in a traceback (AttributeError), exit 1.
    _run("subscribers", "add", "an@example.org")
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" -m syndicate subscribers export - >&-', sys.executable],
        stderr=subprocess.PIPE,
        check=False,
    )
    assert (done.returncode, done.stderr.decode()) == (
        2,
        "Error: standard output: cannot write the CSV: it is closed. Give a file path "
        "instead of -.\n",
    )


def test_erase_forgets_the_address_and_blocks_reimport(project: Path) -> None:
    _run("subscribers", "add", "an@example.org", "--name", "Ân")
    assert _run("subscribers", "erase", "an@example.org")[1] == (
        "Erased an@example.org; only a keyed hash remains, so it cannot be imported again.\n"
    )
    assert _run("subscribers", "list", "--json")[1] == ""
    csv_file = project / "again.csv"
    csv_file.write_text("email\nAN@example.org\n", encoding="utf-8")
    code, out, err = _run("subscribers", "import", str(csv_file))
    assert (code, out) == (1, "Imported 0, unchanged 0, rejected 1 (syndicate list).\n")
    assert err == (
        f"{csv_file} line 2, column email: email address 'AN@example.org' was erased and "
        "cannot be added again. Only the person can subscribe again, through the sign-up form.\n"
    )
    assert _run("subscribers", "add", "an@example.org")[0] == 2
    assert "erased: 1" in _run("subscribers", "stats")[1]
    for path in project.glob("syndicate.db*"):  # the database and its WAL
        data = path.read_bytes().lower()
        assert b"an@example.org" not in data
        assert "Ân".encode() not in data


def test_an_erased_address_stays_refused_after_the_signing_secret_changes(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run("subscribers", "add", "an@example.org")
    assert _run("subscribers", "erase", "an@example.org")[0] == 0  # generated secret
    csv_file = project / "again.csv"
    csv_file.write_text("email\nan@example.org\n", encoding="utf-8")
    for secret in ("first-secret-0123456789", "rotated-secret-9876543210"):
        monkeypatch.setenv("SYNDICATE_SECRET", secret)
        code, out, err = _run("subscribers", "add", "An@example.org")
        assert (code, out) == (2, "")
        assert err == (
            "Error: email address 'An@example.org' was erased and cannot be added again. "
            "Only the person can subscribe again, through the sign-up form.\n"
        )
        code, out, _ = _run("subscribers", "import", str(csv_file))
        assert (code, out) == (1, "Imported 0, unchanged 0, rejected 1 (syndicate list).\n")
    assert _run("subscribers", "list", "--json")[1] == ""


def test_export_defuses_spreadsheet_formulas_and_import_restores_them(project: Path) -> None:
    _run("subscribers", "add", "an@example.org", "--name", '=HYPERLINK("http://x","y")')
    _run("subscribers", "add", "bob@example.org", "--name", "-5 Bob")
    _run("subscribers", "add", "cy@example.org", "--name", "Cy = Cy")
    out_file = project / "export.csv"
    _run("subscribers", "export", str(out_file))
    assert out_file.read_text(encoding="utf-8") == (
        "email,name,language,status\n"
        'an@example.org,"\'=HYPERLINK(""http://x"",""y"")",vi,confirmed\n'
        "bob@example.org,'-5 Bob,vi,confirmed\n"
        "cy@example.org,Cy = Cy,vi,confirmed\n"
    )
    for email in ("an@example.org", "bob@example.org", "cy@example.org"):
        _run("subscribers", "erase", email)
    # Erased addresses cannot come back: import the rows (without status) under new ones.
    rows = list(csv.reader(io.StringIO(out_file.read_text(encoding="utf-8"))))
    again = io.StringIO()
    csv.writer(again, lineterminator="\n").writerows(
        [row[0].replace("@example.org", "@example.net"), *row[1:3]] for row in rows
    )
    (project / "again.csv").write_text(again.getvalue(), encoding="utf-8")
    assert _run("subscribers", "import", str(project / "again.csv"))[0] == 0
    listed = _run("subscribers", "list", "--json")[1]
    names = sorted(json.loads(line)["name"] for line in listed.splitlines())
    assert names == ["-5 Bob", '=HYPERLINK("http://x","y")', "Cy = Cy"]


LISTS = Path(__file__).resolve().parent / "data" / "lists"


def _statuses() -> dict[str, tuple[str | None, str, str]]:
    listed = _run("subscribers", "list", "--json")[1]
    return {
        r["email"]: (r["name"], r["language"], r["status"])
        for r in map(json.loads, listed.splitlines())
    }


def test_export_then_import_into_an_empty_database_keeps_every_status(
    project: Path, monkeypatch: pytest.MonkeyPatch, now: datetime, request: pytest.FixtureRequest
) -> None:
    """Unsubscribed and bounced stay so (never mailed), pending stays pending."""
    _run("subscribers", "add", "an@example.org", "--name", "Nguyễn, Ân")
    _run("subscribers", "add", "bob@example.org", "--lang", "en", "--name", "=Bob")
    _run("subscribers", "add", "dee@example.org")
    _run("subscribers", "remove", "bob@example.org")
    with open_store(load_settings(None, {}, cwd=project).paths.database) as db:
        signup(db, "cee@example.org", language="en", now=now)
        found = get_by_email(db, "dee@example.org")
        assert found is not None
        set_status(db, found.id, SubscriptionStatus.BOUNCED, now=now)
    before = _statuses()
    assert sorted(status for *_, status in before.values()) == [
        "bounced",
        "confirmed",
        "pending",
        "unsubscribed",
    ]
    exported = project / "export.csv"
    _run("subscribers", "export", str(exported))

    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    if os.environ.get(ENV_STORE_URL):  # on PostgreSQL: another, empty database
        monkeypatch.setenv(ENV_STORE_URL, request.getfixturevalue("pg_cluster").new_database())
    monkeypatch.chdir(elsewhere)
    assert _run("subscribers", "import", str(exported)) == (
        0,
        "Imported 4, unchanged 0, rejected 0 (syndicate list).\n",
        "",
    )
    assert _statuses() == before
    again = elsewhere / "again.csv"
    _run("subscribers", "export", str(again))
    assert again.read_bytes() == exported.read_bytes()
    # What `send` mails: the confirmed only.
    assert _run("subscribers", "list", "--status", "confirmed")[1].count("\n") == 1
    # A later file saying someone is subscribed does not bring a leaver back.
    (elsewhere / "resubscribe.csv").write_text(
        "email\nbob@example.org\ndee@example.org\n", encoding="utf-8"
    )
    assert _run("subscribers", "import", str(elsewhere / "resubscribe.csv"))[1] == (
        "Imported 0, unchanged 2, rejected 0 (syndicate list).\n"
    )
    assert _statuses() == before


def test_own_list_file_with_statuses_and_a_defused_formula(project: Path) -> None:
    assert _run("subscribers", "import", str(LISTS / "syndicate.csv"))[0] == 0
    assert _statuses() == {
        "an@example.org": ("Nguyễn, Ân", "vi", "confirmed"),
        "bob@example.org": (None, "en", "unsubscribed"),
        "cee@example.org": ("Cê", "vi", "pending"),
        "dee@example.org": ("=Dee", "en", "bounced"),
    }
    stored = json.loads(_run("subscribers", "list", "--json", "--status", "bounced")[1])
    assert stored["bounced_at"] is not None
    assert stored["confirmed_at"] is None


def test_a_list_a_spreadsheet_saved_with_semicolons_imports(project: Path) -> None:
    # Excel under Vietnamese regional settings (list separator ';') saves "CSV UTF-8" with
    # semicolons: the whole header was one cell, and the import stopped on it, telling the
    # operator to fix a header that was right.
    (project / "excel.csv").write_bytes(
        "\ufeffemail;name;language;status\r\n"
        'an@example.org;"Nguyễn Ân; biên tập";vi;confirmed\r\n'
        "bob@example.org;Bob;en;unsubscribed\r\n".encode()
    )
    assert _run("subscribers", "import", "excel.csv") == (
        0,
        "Imported 2, unchanged 0, rejected 0 (syndicate list).\n",
        "",
    )
    assert _run("subscribers", "list")[1] == (
        "1\tan@example.org\tvi\tconfirmed  Nguyễn Ân; biên tập\n"
        "2\tbob@example.org\ten\tunsubscribed  Bob\n"
    )
    (project / "tabs.csv").write_text("email\tname\ncy@example.org\tCy\n", encoding="utf-8")
    assert _run("subscribers", "import", "tabs.csv")[:2] == (
        0,
        "Imported 1, unchanged 0, rejected 0 (syndicate list).\n",
    )
    # A header the csv module cannot read is still one line (it is no list of either kind).
    (project / "huge.csv").write_text("email;" + "x" * 200_000 + "\n", encoding="utf-8")
    assert _run("subscribers", "import", "huge.csv") == (
        2,
        "",
        "Error: huge.csv line 1: not readable as CSV: field larger than field limit "
        "(131072). Fix that line (a cell may be far too long, or a quote left open), or "
        "export the list again from its tool.\n",
    )
    # LibreOffice's "quote all text cells": the header quoted too.
    quoted = '"email";"name"\n"di@example.org";"Dì"\n'
    (project / "quoted.csv").write_text(quoted, encoding="utf-8")
    assert _run("subscribers", "import", "quoted.csv")[:2] == (
        0,
        "Imported 1, unchanged 0, rejected 0 (syndicate list).\n",
    )


def test_listmonk_export_imports_with_blocklisted_ones_unsubscribed(project: Path) -> None:
    assert _run("subscribers", "import", str(LISTS / "listmonk.csv")) == (
        0,
        "Imported 3, unchanged 0, rejected 0 (listmonk list).\n",
        "",
    )
    assert _statuses() == {
        "lan@example.org": ("Nguyễn Thị Lan", "en", "confirmed"),
        "minh@example.org": ("Trần Minh", "vi", "unsubscribed"),
        "hoa@example.org": ("Hoa", "vi", "unsubscribed"),
    }


def test_mailchimp_exports_import_by_audience_status(project: Path) -> None:
    for name, summary in (
        ("mailchimp-subscribed.csv", "Imported 2, unchanged 0, rejected 0"),
        ("mailchimp-unsubscribed.csv", "Imported 1, unchanged 0, rejected 0"),
        ("mailchimp-cleaned.csv", "Imported 1, unchanged 0, rejected 0"),
    ):
        assert _run("subscribers", "import", str(LISTS / name)) == (
            0,
            f"{summary} (Mailchimp list).\n",
            "",
        )
    assert _statuses() == {
        "an@example.org": ("An Nguyễn", "vi", "confirmed"),
        "binh@example.org": ("Bình", "vi", "confirmed"),
        "cuc@example.org": ("Cúc Lê", "vi", "unsubscribed"),
        "dung@example.org": ("Dũng", "vi", "bounced"),
    }


def test_a_later_unsubscribed_export_unsubscribes_a_stored_subscriber(project: Path) -> None:
    _run("subscribers", "add", "cuc@example.org")
    assert _run("subscribers", "import", str(LISTS / "mailchimp-unsubscribed.csv"))[1] == (
        "Imported 0, 1 stored ones marked as having left, unchanged 0, rejected 0 "
        "(Mailchimp list).\n"
    )
    assert _statuses()["cuc@example.org"][2] == "unsubscribed"


def test_substack_export_imports_with_disabled_email_unsubscribed(project: Path) -> None:
    assert _run("subscribers", "import", str(LISTS / "substack.csv"))[1] == (
        "Imported 3, unchanged 0, rejected 0 (Substack list).\n"
    )
    assert _statuses() == {
        "giang@example.org": (None, "vi", "confirmed"),
        "ha@example.org": (None, "vi", "confirmed"),
        "khoa@example.org": (None, "vi", "unsubscribed"),
    }


def test_bad_cells_of_other_tools_name_their_line_and_column(project: Path) -> None:
    csv_file = project / "listmonk.csv"
    csv_file.write_text(
        "uuid,email,name,attributes,status\n"
        "1,an@example.org,An,{},enabled\n"
        "2,bo@example.org,Bo,{not json,enabled\n"
        "3,cy@example.org,Cy,{},deleted\n"
        "4,di@example.org,Di,{},enabled,extra\n",
        encoding="utf-8",
    )
    code, out, err = _run("subscribers", "import", str(csv_file))
    assert (code, out) == (1, "Imported 1, unchanged 0, rejected 3 (listmonk list).\n")
    fix = " Fix the row and import the file again; the other rows are kept."
    assert err.splitlines() == [
        f"{csv_file} line 3, column attributes: attributes is not JSON.{fix}",
        f"{csv_file} line 4, column status: listmonk status 'deleted' is unknown; expected "
        f"'enabled', 'disabled' or 'blocklisted'.{fix}",
        f"{csv_file} line 5: 6 cells, but the header names 5.{fix}",
    ]


def test_list_on_an_empty_list_says_so(project: Path) -> None:
    assert _run("subscribers", "list") == (
        0,
        "No subscribers yet. Add one with `syndicate subscribers add EMAIL`.\n",
        "",
    )
    bounced = _run("subscribers", "list", "--status", "bounced")
    assert bounced == (0, "No bounced subscribers.\n", "")
    assert _run("subscribers", "list", "--json") == (0, "", "")


def test_add_and_import_default_to_the_sites_language(project: Path) -> None:
    # An English newsroom (site.language = "en") got Vietnamese digests for every address
    # added or imported without a language: the default was "vi" whatever the site's.
    (project / "syndicate.toml").write_text('[site]\nlanguage = "en"\n', encoding="utf-8")
    assert _run("subscribers", "add", "an@example.org") == (
        0,
        "Added an@example.org (id 1, en).\n",
        "",
    )
    assert _run("subscribers", "add", "bo@example.org", "--lang", "vi")[1] == (
        "Added bo@example.org (id 2, vi).\n"
    )
    lists = {
        "own.csv": "email,name,language\ncy@example.org,Cy,\ndi@example.org,Di,vi\n",
        "substack.csv": "email,active_subscription,email_disabled\neve@example.org,false,false\n",
        "listmonk.csv": "uuid,email,name,attributes,status\n1,fay@example.org,Fay,{},enabled\n",
        "mailchimp.csv": '"Email Address","First Name","Last Name"\ngus@example.org,Gus,\n',
    }
    for name, text in lists.items():
        (project / name).write_text(text, encoding="utf-8")
        assert _run("subscribers", "import", name)[0] == 0
    assert [line.split("\t")[1:3] for line in _run("subscribers", "list")[1].splitlines()] == [
        ["an@example.org", "en"],
        ["bo@example.org", "vi"],
        ["cy@example.org", "en"],
        ["di@example.org", "vi"],
        ["eve@example.org", "en"],
        ["fay@example.org", "en"],
        ["gus@example.org", "en"],
    ]


def _big_list(path: Path, rows: int) -> dict[str, str]:
    """Write a list of `rows` rows (every 97th a bad address, every 41st unsubscribed);
    return the status each good address ends with, in file order."""
    lines, wanted = ["email,name,language,status"], {}
    for i in range(1, rows + 1):
        if i % 97 == 0:
            lines.append(f"bad-{i},,vi,confirmed")
            continue
        status = "unsubscribed" if i % 41 == 0 else "confirmed"
        lines.append(f"r{i}@example.org,R {i},vi,{status}")
        wanted[f"r{i}@example.org"] = status
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return wanted


def _stored(db: Database) -> list[str]:
    with db.snapshot() as conn:
        return [row[0] for row in conn.execute("SELECT email FROM subscribers ORDER BY id")]


def test_an_import_killed_midway_keeps_whole_batches_and_a_rerun_finishes_it(
    project: Path,
) -> None:
    # One transaction a row (3,000 rows: 3.9 s on PostgreSQL): an import now stores
    # IMPORT_BATCH rows a transaction, so a SIGKILL leaves whole batches of the file's rows,
    # and running it again ends where an import never stopped does.
    csv_file = project / "big.csv"
    wanted = _big_list(csv_file, IMPORT_BATCH * 3 + 7)
    good = list(wanted)
    _run("subscribers", "add", "first@example.org")  # the store, made before the import
    with open_store(project / "syndicate.db") as db:
        importing = subprocess.Popen(
            [sys.executable, "-m", "syndicate", "subscribers", "import", str(csv_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while len(_stored(db)) == 1 and importing.poll() is None:
                time.sleep(0.002)  # the event polled for: the import's first commit
            importing.send_signal(signal.SIGKILL)
        finally:
            importing.wait()
        kept = _stored(db)[1:]
    # Whole batches: the good rows among the file's first k * IMPORT_BATCH rows.
    batches = [
        [email for email in good if int(email[1:].partition("@")[0]) <= k * IMPORT_BATCH]
        for k in range(1, 4)
    ]
    assert kept in batches
    code, out, _ = _run("subscribers", "import", str(csv_file))
    bad = IMPORT_BATCH * 3 // 97
    assert (code, out) == (
        1,
        f"Imported {len(good) - len(kept)}, unchanged {len(kept)}, rejected {bad} "
        "(syndicate list).\n",
    )
    listed = [json.loads(line) for line in _run("subscribers", "list", "--json")[1].splitlines()]
    assert {r["email"]: r["status"] for r in listed[1:]} == wanted
    assert [r["email"] for r in listed[1:]] == good


def test_an_import_over_several_batches_reports_and_counts_each_row_as_one(
    project: Path,
) -> None:
    # Rows across batch boundaries: a bad address, an erased one (never brought back), an
    # address twice, a stored one the file says left: each reported or counted as before.
    _run("subscribers", "add", "gone@example.org")
    _run("subscribers", "erase", "gone@example.org")
    _run("subscribers", "add", "left@example.org")
    csv_file = project / "list.csv"
    rows = [f"r{i}@example.org,,vi,confirmed" for i in range(1, IMPORT_BATCH * 2 + 1)]
    rows[IMPORT_BATCH - 1] = "not-an-address,,vi,confirmed"  # the last of the first batch
    rows[IMPORT_BATCH] = "gone@example.org,,vi,confirmed"  # the first of the second
    rows[IMPORT_BATCH + 1] = "r1@example.org,,en,confirmed"  # already in the first batch
    rows[-1] = "left@example.org,,vi,unsubscribed"
    csv_file.write_text("email,name,language,status\n" + "\n".join(rows) + "\n")
    code, out, err = _run("subscribers", "import", str(csv_file))
    assert (code, out) == (
        1,
        f"Imported {IMPORT_BATCH * 2 - 4}, 1 stored ones marked as having left, "
        "unchanged 1, rejected 2 (syndicate list).\n",
    )
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        f"{csv_file} line {IMPORT_BATCH + 1}, column email: email address 'not-an-address' "
    )
    assert lines[1] == (
        f"{csv_file} line {IMPORT_BATCH + 2}, column email: email address "
        "'gone@example.org' was erased and cannot be added again. Only the person can "
        "subscribe again, through the sign-up form."
    )
    statuses = {
        record["email"]: (record["status"], record["language"])
        for record in map(json.loads, _run("subscribers", "list", "--json")[1].splitlines())
    }
    assert "gone@example.org" not in statuses
    assert statuses["r1@example.org"] == ("confirmed", "vi")
    assert statuses["left@example.org"] == ("unsubscribed", "vi")
    assert len(statuses) == IMPORT_BATCH * 2 - 3
