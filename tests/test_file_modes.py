"""File modes: what holds addresses or secrets is the owner's alone, whatever the umask.

The database (with its -wal and -shm), the send lock, outbox mails and subscriber
exports are created 0600 and the folders made for them 0700; a DKIM key others
can read is refused. Real files under tmp_path, the real CLI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from syndicate.cli import AppContext, cli
from syndicate.config import DkimSettings, Settings, exposed_secret_warning, load_settings
from syndicate.errors import ConfigError
from syndicate.send import open_send_lock, read_dkim_key
from syndicate.send.transports import OutboxMailer
from syndicate.store import open_database
from syndicate.store.subscribers import add_subscriber
from tests.conftest import FIXED_NOW

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
MAIL = b"To: an@example.org\r\nMessage-ID: <2024-11-01.1@news.example.org>\r\n\r\nHello\r\n"
PEM = b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    """The common default umask, 022: without care, new files would be 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def project(workdir: Path, monkeypatch: pytest.MonkeyPatch, umask: None) -> Path:
    for seed in SEEDS.glob("*.txt"):
        shutil.copy(seed, workdir / "seeds" / seed.name)
    monkeypatch.chdir(workdir)
    for name in ("SYNDICATE_CONFIG", "SYNDICATE_SECRET", "SYNDICATE_SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    # The day the seeds were news: a clock years later would add the freshness warning.
    monkeypatch.setattr(AppContext, "now", lambda self: FIXED_NOW.timestamp())
    return workdir


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_a_new_database_its_wal_shm_and_folders_are_private(
    tmp_path: Path, umask: None, now: datetime
) -> None:
    shared = tmp_path / "srv"
    shared.mkdir(mode=0o755)
    path = shared / "var" / "lib" / "syndicate.db"
    with open_database(path) as db:
        add_subscriber(db, "an@example.org", now=now)
        for name in ("syndicate.db", "syndicate.db-wal", "syndicate.db-shm"):
            assert _mode(path.with_name(name)) == 0o600, name
    assert _mode(shared / "var") == _mode(shared / "var" / "lib") == 0o700
    assert _mode(shared) == 0o755  # a folder that was there is left alone


def test_a_database_path_that_links_to_no_file_yet_makes_a_private_one(
    tmp_path: Path, umask: None, now: datetime
) -> None:
    # paths.database a link to a file not made yet (a data volume's place for it): the
    # 0600 file was refused by O_EXCL at the link, and SQLite, following it, made the file
    # 0644 under umask 022, every address and the signing secret readable by all users.
    volume = tmp_path / "volume"
    volume.mkdir()
    path = tmp_path / "syndicate.db"
    path.symlink_to(volume / "syndicate.db")
    with open_database(path) as db:
        add_subscriber(db, "an@example.org", now=now)
        for name in ("syndicate.db", "syndicate.db-wal", "syndicate.db-shm"):
            assert _mode(volume / name) == 0o600, name
    assert path.is_symlink()


def test_an_existing_database_open_to_everyone_is_tightened_with_a_warning(
    tmp_path: Path, umask: None, now: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    with open_database(path) as db:
        add_subscriber(db, "an@example.org", now=now)
    path.chmod(0o664)  # as an older syndicate (and a group-shared setup) left it
    with caplog.at_level(logging.WARNING, logger="syndicate.store"):
        open_database(path).close()
    assert _mode(path) == 0o660  # the group keeps what the operator gave it
    assert caplog.messages == [
        f"{path}: was open to all users (mode 0664); now 0660. Run chmod 600 {path} "
        "unless another user of its group needs it."
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="syndicate.store"):
        open_database(path).close()
    assert caplog.messages == []


def _as_another_user(tmp_path: Path) -> list[str]:
    """A command prefix under which root is refused files it does not own, as any other user
    is (setpriv drops CAP_DAC_OVERRIDE); skips where it cannot run."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    probe.chmod(0o600)
    os.chown(probe, 65534, 65534)
    done = subprocess.run([*prefix, "cat", str(probe)], capture_output=True, timeout=30)
    if done.returncode == 0 or b"Permission denied" not in done.stderr:
        pytest.skip(f"setpriv cannot drop CAP_DAC_OVERRIDE here: {done.stderr!r}")
    return prefix


def test_a_store_another_user_owns_is_one_line_naming_both_users(
    tmp_path: Path, now: datetime
) -> None:
    # The setup commands run with sudo (as root), then cron and serve as the service's user:
    # "unable to open database file. Check paths.database and the folder's permissions."
    # named neither whose the file is nor who was asking.
    prefix = _as_another_user(tmp_path)
    folder = tmp_path / "project"
    folder.mkdir()
    with open_database(folder / "syndicate.db") as db:
        add_subscriber(db, "an@example.org", now=now)
    os.chown(folder / "syndicate.db", 65534, 65534)
    owner, me = pwd.getpwuid(65534).pw_name, pwd.getpwuid(os.geteuid()).pw_name
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "syndicate", "subscribers", "add", "bo@example.org"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    path = folder / "syndicate.db"
    assert (done.returncode, done.stdout, done.stderr) == (
        2,
        "",
        f"Error: {path}: this user ({me}) may not read and write it (owner {owner}, mode "
        f"0600). Run syndicate as {owner}, whose store it is, or give {me} what it needs: "
        f"chown {me} {path}; nothing was changed.\n",
    )


def test_a_database_path_under_a_file_says_that_file_is_no_folder(project: Path) -> None:
    # paths.database = "notes/syndicate.db" where notes is a file: the store named root as
    # the user who "may not make it in" the file and told root to run syndicate as root.
    (project / "notes").write_text("not a folder\n", encoding="utf-8")
    for database in ("notes/syndicate.db", "notes/sub/syndicate.db"):
        (project / "syndicate.toml").write_text(
            f'[paths]\ndatabase = "{database}"\n', encoding="utf-8"
        )
        assert _run("subscribers", "add", "an@example.org") == (
            2,
            "",
            f"Error: {project / database}: {project / 'notes'} is not a folder. Point "
            "paths.database at a file in a folder (or where one can be made); nothing was "
            "changed.\n",
        )
    assert sorted(p.name for p in project.iterdir()) == ["notes", "seeds", "syndicate.toml"]


def test_a_database_path_naming_a_folder_says_it_is_a_folder(project: Path) -> None:
    # It said "unable to open database file. Check paths.database and the folder's
    # permissions.", as if the folder's mode were the trouble.
    (project / "data").mkdir()
    (project / "syndicate.toml").write_text('[paths]\ndatabase = "data"\n', encoding="utf-8")
    assert _run("subscribers", "add", "an@example.org") == (
        2,
        "",
        f"Error: {project / 'data'}: a folder, not a file. Point paths.database at a file, "
        "such as syndicate.db in that folder; nothing was changed.\n",
    )
    assert list((project / "data").iterdir()) == []


def test_a_send_lock_another_user_left_is_one_line_naming_both_users(
    tmp_path: Path, now: datetime
) -> None:
    # `send` once run with sudo leaves its lock file root's; the store given to the
    # service's user since, cron's `send` said only "Permission denied. Check that the
    # database folder is writable", which it is.
    prefix = _as_another_user(tmp_path)
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copytree(Path(__file__).resolve().parent.parent / "seeds", folder / "seeds")
    with open_database(folder / "syndicate.db") as db:
        add_subscriber(db, "an@example.org", now=now)
    lock = folder / "syndicate.db.lock"
    lock.write_bytes(b"")
    lock.chmod(0o600)
    os.chown(lock, 65534, 65534)
    owner, me = pwd.getpwuid(65534).pw_name, pwd.getpwuid(os.geteuid()).pw_name
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "syndicate", "-q", "send"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"Error: {lock}: cannot open the send lock: Permission denied; it belongs to {owner} "
        f"and this command runs as {me}. Run syndicate as one user; the lock holds no data, "
        f"so when no `syndicate send` runs it may be removed, or given to {me} (chown)."
    )
    assert "Traceback" not in done.stderr
    assert lock.stat().st_uid == 65534  # left as it was


def test_under_umask_077_nothing_is_widened(tmp_path: Path, now: datetime) -> None:
    old = os.umask(0o077)
    try:
        with open_database(tmp_path / "db" / "syndicate.db") as db:
            add_subscriber(db, "an@example.org", now=now)
        with open_send_lock(tmp_path / "db" / "syndicate.db") as lock:
            assert _mode(lock) == 0o600
        # The outbox used to force its mails to 0644, even under this umask.
        mailer = OutboxMailer(tmp_path / "outbox" / "2024-11-01")
        asyncio.run(mailer.send("news@example.org", ["an@example.org"], MAIL))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "db" / "syndicate.db") == 0o600
    assert _mode(tmp_path / "db") == 0o700
    [mail] = (tmp_path / "outbox" / "2024-11-01").iterdir()
    assert mail.name == "2024-11-01.1_news.example.org.eml"
    assert _mode(mail) == 0o600
    assert _mode(mail.parent) == _mode(mail.parent.parent) == 0o700


def test_the_send_lock_and_its_folder_are_private(tmp_path: Path, umask: None) -> None:
    with open_send_lock(tmp_path / "new" / "syndicate.db") as lock:
        assert lock == tmp_path / "new" / "syndicate.db.lock"
        assert _mode(lock) == 0o600
    assert _mode(tmp_path / "new") == 0o700


def test_outbox_mails_and_exports_are_private_under_umask_022(project: Path) -> None:
    assert _run("subscribers", "add", "an@example.org")[0] == 0
    assert _mode(project / "syndicate.db") == 0o600
    code, _, err = _run("send")
    assert (code, err) == (0, "")
    code, _, err = _run("send", "--to", "editor@example.org")
    assert (code, err) == (0, "")
    outbox = project / "outbox"
    mails = sorted(outbox.rglob("*.eml"))
    assert len(mails) == 2  # the digest and the test copy
    assert {_mode(mail) for mail in mails} == {0o600}
    assert {_mode(folder) for folder in [outbox, *(m.parent for m in mails)]} == {0o700}
    assert _mode(project / "syndicate.db.lock") == 0o600

    export = project / "backup" / "list.csv"
    assert _run("subscribers", "export", str(export))[0] == 0
    assert (_mode(export), _mode(export.parent)) == (0o600, 0o700)
    export.chmod(0o644)  # a file left by an older syndicate is replaced by a private one
    assert _run("subscribers", "export", str(export))[0] == 0
    assert _mode(export) == 0o600


# --- the config file ----------------------------------------------------------------------


def _exposed(path: Path, held: str, mode: str) -> str:
    return (
        f"warning: config file {path} holds {held} and every user of this machine may read "
        f"it (mode {mode}): whoever reads the signing secret can forge unsubscribe and "
        f"confirm links for every subscriber. Run chmod 600 {path} (640 to share it with a "
        "group), or set SYNDICATE_SECRET in the environment instead."
    )


def test_a_config_file_every_user_may_read_holding_the_signing_secret_is_warned_about(
    project: Path,
) -> None:
    # A syndicate.toml written under umask 022 is 0644: another local user read mail.secret
    # from it and forged an unsubscribe link for any subscriber (reproduced against serve).
    config = project / "syndicate.toml"
    config.write_text('[mail]\nsecret = "0123456789abcdef0123"\n', encoding="utf-8")
    assert _mode(config) == 0o644
    code, _, err = _run("subscribers", "add", "an@example.org")
    assert (code, err) == (0, _exposed(config, "the signing secret (mail.secret)", "0644") + "\n")
    config.chmod(0o640)  # shared with a group (serve as another user): a deliberate setup
    code, _, err = _run("subscribers", "add", "binh@example.org")
    assert (code, err) == (0, "")


def test_a_password_in_a_store_url_every_user_may_read_is_warned_about(
    tmp_path: Path, umask: None
) -> None:
    config = tmp_path / "syndicate.toml"
    config.write_text('[store]\nurl = "postgresql://news:pw@db.example.org/news"\n')
    settings = load_settings(config, {}, cwd=tmp_path)
    assert exposed_secret_warning(config, settings, {}) == (
        f"config file {config} holds the store's password (store.url) and every user of "
        "this machine may read it (mode 0644): whoever reads the password can read and "
        f"change every subscriber's data. Run chmod 600 {config} (640 to share it with a "
        "group), or set SYNDICATE_STORE_URL in the environment instead."
    )
    # The environment's URL is the one used; a file without a password holds none.
    environ = {"SYNDICATE_STORE_URL": "postgresql://news@db.example.org/news"}
    assert exposed_secret_warning(config, load_settings(config, environ), environ) is None
    config.write_text('[store]\nurl = "postgresql://news@db.example.org/news"\n')
    assert exposed_secret_warning(config, load_settings(config, {}), {}) is None


def test_a_password_in_a_store_urls_query_every_user_may_read_is_warned_about(
    tmp_path: Path, umask: None
) -> None:
    # libpq takes the password from the URL's query as well ("?password=..."): no warning.
    config = tmp_path / "syndicate.toml"
    for url in (
        "postgresql://news@db.example.org/news?password=pw",
        "postgresql://news@db.example.org/news?sslmode=require&password=pw",
    ):
        config.write_text(f'[store]\nurl = "{url}"\n')
        warning = exposed_secret_warning(config, load_settings(config, {}), {})
        assert warning is not None
        assert warning.startswith(f"config file {config} holds the store's password")
    config.write_text('[store]\nurl = "postgresql://news@db.example.org/news?sslmode=require"\n')
    assert exposed_secret_warning(config, load_settings(config, {}), {}) is None


# --- the DKIM key -------------------------------------------------------------------------


def _dkim(settings: Settings, key: Path) -> Settings:
    return dataclasses.replace(
        settings, dkim=DkimSettings(domain="example.org", selector="s1", key_file=key)
    )


@pytest.mark.parametrize(
    ("mode", "what"),
    [
        (0o644, "readable by others"),
        (0o604, "readable by others"),
        (0o640, "readable by its group"),
        (0o620, "writable by group or others"),
    ],
    ids=["0644", "0604", "0640", "0620"],
)
def test_a_dkim_key_open_to_others_is_refused(
    tmp_path: Path, settings: Settings, mode: int, what: str
) -> None:
    key = tmp_path / "dkim.key"
    key.write_bytes(PEM)
    key.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        read_dkim_key(_dkim(settings, key))
    assert (
        str(caught.value) == f"dkim.key_file {key}: {what} (mode {mode:04o}); run chmod 600 {key}."
    )
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=["0600", "0400"])
def test_a_dkim_key_only_its_owner_can_read_is_used(
    tmp_path: Path, settings: Settings, mode: int
) -> None:
    key = tmp_path / "dkim.key"
    key.write_bytes(PEM)
    key.chmod(mode)
    found = read_dkim_key(_dkim(settings, key))
    assert found is not None
    assert found.private_key == PEM


def test_send_refuses_a_world_readable_dkim_key_with_one_line_and_exit_2(project: Path) -> None:
    key = project / "dkim.key"
    key.write_bytes(PEM)
    assert _mode(key) == 0o644
    (project / "syndicate.toml").write_text(
        f'[dkim]\ndomain = "example.org"\nselector = "s1"\nkey_file = "{key}"\n',
        encoding="utf-8",
    )
    assert _run("subscribers", "add", "an@example.org")[0] == 0
    assert _run("send") == (
        2,
        "",
        f"Error: dkim.key_file {key}: readable by others (mode 0644); run chmod 600 {key}.\n",
    )
    assert not (project / "outbox").exists()


def test_tightening_an_existing_database_does_not_follow_a_planted_link(tmp_path: Path) -> None:
    database = tmp_path / "syndicate.db"
    open_database(database).close()
    for side in ("-wal", "-shm"):
        Path(f"{database}{side}").unlink(missing_ok=True)
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("not ours\n", encoding="utf-8")
    victim.chmod(0o644)
    Path(f"{database}-shm").symlink_to(victim)
    try:
        open_database(database).close()
    except Exception:  # noqa: S110 - SQLite may refuse the link; the mode is the point
        pass
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
