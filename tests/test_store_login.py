"""A PostgreSQL login the server refuses is a setup error (exit 2), never "try again later".

A wrong password, a role or database that does not exist, or a connection pg_hba.conf or
the database's rights refuse: each is one line naming host, user and database (never the
password) with what to fix, exit 2, so cron's mail says so instead of retrying silently.
A server that cannot be reached stays exit 75 (test_send_postgres, test_store_copy).
The session's cluster trusts every login: the module adds pg_hba.conf lines for roles of
its own only (a password asked of one, every connection of another rejected).
"""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from syndicate.cli import cli
from syndicate.errors import StoreAccessError
from syndicate.store import open_database
from tests.plugins.postgres import ENV_STORE_URL, Cluster

PASSWORD = "right-pw-never-shown"
WRONG = "wrong-pw-never-shown"
ASKED = "syndicate_login_pw"  # must give its password (scram-sha-256)
REJECTED = "syndicate_login_rejected"  # pg_hba.conf rejects it
HBA = f"host all {ASKED} 127.0.0.1/32 scram-sha-256\nhost all {REJECTED} 127.0.0.1/32 reject\n"


@pytest.fixture(scope="module")
def roles(pg_cluster: Cluster) -> Cluster:
    """The two roles, and their pg_hba.conf lines first in the cluster's file (once a
    process: each xdist process has a cluster of its own)."""
    admin_url = pg_cluster.url("postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for role in (ASKED, REJECTED):
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                continue
            admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        hba = Path(admin.execute("SHOW hba_file").fetchone()[0])
        text = hba.read_text()
        if HBA not in text:
            hba.write_text(HBA + text)
            admin.execute("SELECT pg_reload_conf()")
    # The postmaster rereads the file once it has the signal: wait until a login without a
    # password is refused (a poll: the reload announces itself nowhere a client can wait on).
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(_url(pg_cluster, ASKED, "", "postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            break
        assert time.monotonic() < deadline, "pg_hba.conf was not reloaded"
        time.sleep(0.02)
    return pg_cluster


def _url(cluster: Cluster, user: str, password: str, dbname: str) -> str:
    secret = f":{password}" if password else ""
    return f"postgresql://{user}{secret}@127.0.0.1:{cluster.port}/{dbname}"


def _list(url: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.chdir(workdir)
    monkeypatch.setenv(ENV_STORE_URL, url)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(workdir / "no-pgpass"))
    result = CliRunner().invoke(cli, ["subscribers", "list"], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _refused(cluster: Cluster, user: str, dbname: str, reason: str, hint: str) -> str:
    return (
        f"Error: PostgreSQL at 127.0.0.1:{cluster.port}/{dbname}: cannot log in as user "
        f"{user!r} to database {dbname!r}: {reason}. {hint} Trying again will not help "
        "until this is fixed.\n"
    )


def test_a_database_that_does_not_exist_is_exit_2_saying_to_create_it(
    pg_cluster: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _url(pg_cluster, "postgres", "", "no_such_db")
    code, out, err = _list(url, workdir, monkeypatch)
    assert (code, out) == (2, "")
    assert err == _refused(
        pg_cluster,
        "postgres",
        "no_such_db",
        'database "no_such_db" does not exist',
        "Check the database name in SYNDICATE_STORE_URL, or create it "
        "(createdb -O postgres no_such_db).",
    )


def test_a_role_that_does_not_exist_is_exit_2_never_showing_the_password(
    pg_cluster: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _url(pg_cluster, "nobody_here", PASSWORD, "postgres")
    code, out, err = _list(url, workdir, monkeypatch)
    assert (code, out) == (2, "")
    assert err == _refused(
        pg_cluster,
        "nobody_here",
        "postgres",
        'role "nobody_here" does not exist',
        "Check the user in SYNDICATE_STORE_URL, or create the role on the "
        "server (CREATE ROLE nobody_here LOGIN PASSWORD ...).",
    )
    assert PASSWORD not in err


def _copy(
    source: str, target: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv(ENV_STORE_URL, raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(workdir / "no-pgpass"))
    args = ["store", "copy", "--from", source, "--to", target]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_a_login_store_copy_is_refused_names_the_option_its_url_came_from(
    roles: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `store copy` reads no store.url: its refused logins said to check store.url (or
    # SYNDICATE_STORE_URL), which the operator had not set, for a URL they gave --to.
    open_database(workdir / "old.db").close()
    url = _url(roles, "postgres", "", "no_such_db")
    code, out, err = _copy("old.db", url, workdir, monkeypatch)
    assert (code, out) == (2, "")
    assert err == _refused(
        roles,
        "postgres",
        "no_such_db",
        'database "no_such_db" does not exist',
        "Check the database name in the --to URL, or create it (createdb -O postgres no_such_db).",
    )
    wrong = _url(roles, ASKED, WRONG, "postgres")
    code, out, err = _copy(wrong, "new.db", workdir, monkeypatch)
    assert (code, out) == (2, "")
    reason = f'password authentication failed for user "{ASKED}"'
    assert err == _refused(
        roles,
        ASKED,
        "postgres",
        reason,
        "Check the password (in the --from URL, or in PGPASSWORD or ~/.pgpass) against the "
        f"role's on the server (ALTER ROLE {ASKED} PASSWORD ...).",
    )
    assert WRONG not in err
    assert not (workdir / "new.db").exists()


def test_a_login_hint_names_the_config_key_when_the_url_is_in_the_config_file(
    pg_cluster: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hints named "store.url (or SYNDICATE_STORE_URL)" wherever the URL was.
    url = _url(pg_cluster, "postgres", "", "no_such_db")
    (workdir / "syndicate.toml").write_text(f'[store]\nurl = "{url}"\n', encoding="utf-8")
    monkeypatch.chdir(workdir)
    monkeypatch.delenv(ENV_STORE_URL, raising=False)
    result = CliRunner().invoke(cli, ["subscribers", "list"], catch_exceptions=False)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == _refused(
        pg_cluster,
        "postgres",
        "no_such_db",
        'database "no_such_db" does not exist',
        "Check the database name in store.url, or create it (createdb -O postgres no_such_db).",
    )


@pytest.mark.parametrize("option", ["--from", "--to"])
def test_a_store_copy_login_hint_names_the_option_that_gave_the_url(
    pg_cluster: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    # `store copy` said to check store.url (or SYNDICATE_STORE_URL), which it does not use.
    monkeypatch.chdir(workdir)
    monkeypatch.setenv(ENV_STORE_URL, pg_cluster.url("postgres"))  # not the copy's
    bad = _url(pg_cluster, "nobody_here", PASSWORD, "postgres")
    locations = {"--from": bad, "--to": str(workdir / "copy.db")}
    if option == "--to":
        monkeypatch.delenv(ENV_STORE_URL)
        CliRunner().invoke(cli, ["subscribers", "add", "an@example.org"])  # a store to copy
        locations = {"--from": str(workdir / "syndicate.db"), "--to": bad}
    args = ["store", "copy", "--from", locations["--from"], "--to", locations["--to"]]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == _refused(
        pg_cluster,
        "nobody_here",
        "postgres",
        'role "nobody_here" does not exist',
        f"Check the user in the {option} URL, or create the role on the server "
        "(CREATE ROLE nobody_here LOGIN PASSWORD ...).",
    )
    assert PASSWORD not in result.stderr
    assert not (workdir / "copy.db").exists()


# What a refused login says to do, with a wrong password and with none.
WRONG_PASSWORD_HINT = (
    "Check the password (in SYNDICATE_STORE_URL, or in PGPASSWORD or "
    f"~/.pgpass) against the role's on the server (ALTER ROLE {ASKED} PASSWORD ...)."
)
NO_PASSWORD_HINT = (
    "No password was given: put it in ~/.pgpass (or the file PGPASSFILE names) as "
    "host:port:database:user:password, mode 0600, or in PGPASSWORD."
)


def test_a_wrong_or_missing_password_is_exit_2_and_the_right_one_logs_in(
    roles: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = roles.new_database()
    dbname = url.rsplit("/", 1)[1]
    hint = WRONG_PASSWORD_HINT
    try:
        code, out, err = _list(_url(roles, ASKED, WRONG, dbname), workdir, monkeypatch)
        assert (code, out) == (2, "")
        reason = f'password authentication failed for user "{ASKED}"'
        assert err == _refused(roles, ASKED, dbname, reason, hint)
        assert WRONG not in err
        code, out, err = _list(_url(roles, ASKED, "", dbname), workdir, monkeypatch)
        assert (code, out) == (2, "")
        none_given = NO_PASSWORD_HINT
        assert err == _refused(
            roles, ASKED, dbname, "fe_sendauth: no password supplied", none_given
        )
        # With its password it gets in (a store not made yet: nothing to list).
        code, out, err = _list(_url(roles, ASKED, PASSWORD, dbname), workdir, monkeypatch)
        assert (code, err) == (0, ""), err
        assert out.startswith("No subscribers yet.")
    finally:
        roles.drop_database(url)


def test_a_connection_pg_hba_or_the_database_rights_refuse_is_exit_2(
    roles: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _url(roles, REJECTED, PASSWORD, "postgres")
    code, out, err = _list(url, workdir, monkeypatch)
    assert (code, out) == (2, "")
    assert err.startswith(
        f"Error: PostgreSQL at 127.0.0.1:{roles.port}/postgres: cannot log in as user "
        f"{REJECTED!r} to database 'postgres': pg_hba.conf rejects connection for host "
    )
    assert err.endswith(
        "Let this user in from this machine: a line for it in the server's pg_hba.conf, and "
        f"GRANT CONNECT ON DATABASE postgres TO {REJECTED}. Trying again will not help until "
        "this is fixed.\n"
    )
    assert len(err.splitlines()) == 1
    assert PASSWORD not in err
    # A database whose CONNECT right is taken from everybody (PUBLIC): 42501 at connect.
    closed = roles.new_database()
    dbname = closed.rsplit("/", 1)[1]
    try:
        with psycopg.connect(roles.url("postgres"), autocommit=True) as admin:
            admin.execute(f'REVOKE CONNECT ON DATABASE "{dbname}" FROM PUBLIC')
        with pytest.raises(StoreAccessError) as caught:
            open_database(workdir / "unused.db", url=_url(roles, ASKED, PASSWORD, dbname))
        assert str(caught.value).startswith(
            f"PostgreSQL at 127.0.0.1:{roles.port}/{dbname}: cannot log in as user {ASKED!r} "
            f'to database {dbname!r}: permission denied for database "{dbname}". '
        )
        assert caught.value.exit_code == 2
    finally:
        roles.drop_database(closed)


_AT = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (_AT + 'FATAL:  password authentication failed for user "news"', "password"),
        (_AT + "fe_sendauth: no password supplied", "password"),
        (_AT + 'FATAL:  Peer authentication failed for user "news"', "access"),
        (_AT + 'FATAL:  certificate authentication failed for user "news"', "access"),
        (_AT + 'FATAL:  role "news" does not exist', "role"),
        (_AT + 'FATAL:  role "news" is not permitted to log in', "role"),
        (_AT + 'FATAL:  database "news" does not exist', "database"),
        (
            _AT + 'FATAL:  no pg_hba.conf entry for host "10.0.0.2", user "news", database "news", '
            "no encryption",
            "access",
        ),
        (
            _AT + 'FATAL:  permission denied for database "news"\nDETAIL:  User does not have '
            "CONNECT privilege.",
            "access",
        ),
        # Each of these may pass: exit 75, and the next run tries again.
        # A method that asks another server (an LDAP or RADIUS server, PAM's backend, the
        # client's identd, a Kerberos KDC) fails with the same words when that server is
        # down or slow: the server tells the client nothing more.
        (_AT + 'FATAL:  LDAP authentication failed for user "news"', None),
        (_AT + 'FATAL:  RADIUS authentication failed for user "news"', None),
        (_AT + 'FATAL:  PAM authentication failed for user "news"', None),
        (_AT + 'FATAL:  Ident authentication failed for user "news"', None),
        (_AT + 'FATAL:  GSSAPI authentication failed for user "news"', None),
        (_AT + "FATAL:  the database system is starting up", None),
        (_AT + "FATAL:  the database system is shutting down", None),
        (_AT + "FATAL:  sorry, too many clients already", None),
        (_AT + 'FATAL:  too many connections for role "news"', None),
        (
            _AT + "Connection refused\n\tIs the server running on that host and accepting TCP/IP "
            "connections?",
            None,
        ),
        (_AT + "timeout expired", None),
        ("failed to resolve host 'db.example.org': [Errno -2] Name or service not known", None),
        ("the server sent nothing for 120 s (store.reply_timeout)", None),
    ],
)
def test_which_failed_connections_no_retry_fixes(message: str, kind: str | None) -> None:
    from syndicate.store.postgres import refused_login

    found = refused_login(Exception(message))
    assert (found[0] if found else None) == kind


def _service_file(workdir: Path, monkeypatch: pytest.MonkeyPatch, **values: object) -> None:
    """A libpq connection service file holding one service, `news`, made of `values`."""
    lines = "".join(f"{key}={value}\n" for key, value in values.items())
    (workdir / "pg_service.conf").write_text(f"[news]\n{lines}", encoding="utf-8")
    monkeypatch.setenv("PGSERVICEFILE", str(workdir / "pg_service.conf"))


def test_a_login_refused_through_a_service_file_names_what_libpq_used(
    roles: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The docs steer passwords out of the URL; a service file (or PGHOST and the like) holds
    # the rest. The line named "localhost", and user and database 'root' (this machine's
    # user), with ALTER ROLE root as the fix: none of them what libpq had tried.
    url = roles.new_database()
    dbname = url.rsplit("/", 1)[1]
    hint = WRONG_PASSWORD_HINT
    reason = f'password authentication failed for user "{ASKED}"'
    try:
        _service_file(
            workdir,
            monkeypatch,
            host="127.0.0.1",
            port=roles.port,
            dbname=dbname,
            user=ASKED,
            password=WRONG,
        )
        code, out, err = _list("postgresql://?service=news", workdir, monkeypatch)
        assert (code, out) == (2, "")
        assert err == _refused(roles, ASKED, dbname, reason, hint)
        assert WRONG not in err
        # The same from libpq's environment variables, with a URL that names none of it.
        monkeypatch.delenv("PGSERVICEFILE")
        for name, value in [
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", str(roles.port)),
            ("PGDATABASE", dbname),
            ("PGUSER", ASKED),
        ]:
            monkeypatch.setenv(name, value)
        code, out, err = _list("postgresql://", workdir, monkeypatch)
        assert (code, out) == (2, "")
        none_given = NO_PASSWORD_HINT
        assert err == _refused(
            roles, ASKED, dbname, "fe_sendauth: no password supplied", none_given
        )
    finally:
        roles.drop_database(url)


def test_a_store_reached_through_a_service_file_is_named_by_its_host_in_later_lines(
    roles: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = roles.new_database()
    dbname = url.rsplit("/", 1)[1]
    try:
        _service_file(workdir, monkeypatch, host="127.0.0.1", port=roles.port, dbname=dbname)
        monkeypatch.setenv("PGUSER", "postgres")
        monkeypatch.setenv(ENV_STORE_URL, "postgresql://?service=news")
        monkeypatch.chdir(workdir)
        done = CliRunner().invoke(cli, ["subscribers", "add", "an@example.org"])
        assert done.exit_code == 0, done.output
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("UPDATE syndicate_schema SET version = version + 1")
        done = CliRunner().invoke(cli, ["subscribers", "list"], catch_exceptions=False)
        assert done.exit_code == 2
        assert done.stderr.startswith(
            f"Error: PostgreSQL at 127.0.0.1:{roles.port}/{dbname}: schema version "
        ), done.stderr
    finally:
        roles.drop_database(url)


def test_a_server_libpq_environment_names_that_cannot_be_reached_is_named_by_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", str(port))
    code, out, err = _list("postgresql:///news", workdir, monkeypatch)
    assert (code, out) == (75, "")
    assert err.startswith(f"Error: PostgreSQL at 127.0.0.1:{port}/news: cannot reach "), err


@pytest.mark.parametrize(
    ("service_file", "reason"),
    [
        (None, 'definition of service "elsewhere" not found'),
        ("missing.conf", 'service file "{workdir}/missing.conf" not found'),
        (
            "[elsewhere]\nno equals sign\n",
            'syntax error in service file "{workdir}/bad.conf", line 2',
        ),
    ],
)
def test_a_connection_service_libpq_cannot_find_is_exit_2_not_75(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, service_file: str | None, reason: str
) -> None:
    # A service name or service file with a typo said "cannot reach the database ... the next
    # run tries again" with exit 75: cron retried it for ever in silence.
    if service_file is None:
        _service_file(workdir, monkeypatch, host="127.0.0.1")
    elif service_file.endswith(".conf"):
        monkeypatch.setenv("PGSERVICEFILE", str(workdir / service_file))
    else:
        (workdir / "bad.conf").write_text(service_file, encoding="utf-8")
        monkeypatch.setenv("PGSERVICEFILE", str(workdir / "bad.conf"))
    expected = (
        "Error: PostgreSQL service 'elsewhere': libpq cannot use the connection service: "
        f"{reason.format(workdir=workdir)}. Check the service's name (service= in "
        "SYNDICATE_STORE_URL, or PGSERVICE) and its file (PGSERVICEFILE, else "
        "~/.pg_service.conf); trying again will not help until then.\n"
    )
    code, out, err = _list("postgresql://?service=elsewhere", workdir, monkeypatch)
    assert (code, out, err) == (2, "", expected)
    # Named by PGSERVICE, with a URL that names nothing ("PostgreSQL at localhost:5432").
    monkeypatch.setenv("PGSERVICE", "elsewhere")
    code, out, err = _list("postgresql://", workdir, monkeypatch)
    assert (code, out, err) == (2, "", expected)


def test_a_server_without_ssl_when_the_url_requires_it_says_to_change_one_of_them(
    pg_cluster: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fix offered was a pg_hba.conf line and GRANT CONNECT, neither of which helps.
    url = pg_cluster.url("postgres") + "?sslmode=require"
    code, out, err = _list(url, workdir, monkeypatch)
    assert (code, out) == (2, "")
    assert err == _refused(
        pg_cluster,
        "postgres",
        "postgres",
        "server does not support SSL, but SSL was required",
        "The URL asks for SSL (sslmode require, verify-ca or verify-full) and the server "
        "offers none: turn ssl on in the server's postgresql.conf, or give "
        "SYNDICATE_STORE_URL a lower sslmode.",
    )


def test_a_password_file_others_may_read_is_named_as_why_no_password_was_given(
    roles: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq skips it (a warning of its own on stderr): the line said to check the password
    # against the role's, which is right, and to ALTER ROLE, which changes nothing.
    url = roles.new_database()
    dbname = url.rsplit("/", 1)[1]
    try:
        passfile = workdir / "no-pgpass"  # where _list points PGPASSFILE
        passfile.write_text(f"127.0.0.1:{roles.port}:*:{ASKED}:{PASSWORD}\n", encoding="utf-8")
        passfile.chmod(0o644)
        code, out, err = _list(_url(roles, ASKED, "", dbname), workdir, monkeypatch)
        assert (code, out) == (2, "")
        assert err == _refused(
            roles,
            ASKED,
            dbname,
            "fe_sendauth: no password supplied",
            f"libpq skipped the password file {passfile}: others may read it (mode 0644). "
            f"Run chmod 600 {passfile}.",
        )
        assert PASSWORD not in err
        passfile.chmod(0o600)
        code, out, err = _list(_url(roles, ASKED, "", dbname), workdir, monkeypatch)
        assert (code, err) == (0, ""), err
    finally:
        roles.drop_database(url)


_DENIED_HINT = (
    "The role in store.url or SYNDICATE_STORE_URL (or the URL given to `store copy`) may not "
    "do this: run syndicate as the role that made the tables (their owner), or have that "
    "role GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO it. Trying "
    "again will not help until this is fixed."
)


def _store_made_by_another_role(cluster: Cluster, workdir: Path) -> tuple[str, str]:
    """A store the superuser made (a `store copy` run as postgres, say), which the role
    ASKED may log in to and read but not write; its admin URL and the role's URL."""
    from syndicate.store.subscribers import add_subscriber

    url = cluster.new_database()
    dbname = url.rsplit("/", 1)[1]
    with open_database(workdir / "unused.db", url=url) as db:
        add_subscriber(db, "an@example.org", now=datetime.now(UTC))
    with psycopg.connect(url, autocommit=True) as admin:
        # USAGE as a new database's public schema gives it to all (one the suite emptied
        # for reuse was made again without it).
        admin.execute(f"GRANT USAGE ON SCHEMA public TO {ASKED}")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ASKED}")
    return url, _url(cluster, ASKED, PASSWORD, dbname)


def test_a_role_lacking_a_right_on_the_tables_is_one_line_saying_what_to_grant(
    roles: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The line was 'subscriber query failed: permission denied for table subscribers.' with
    # nothing to do about it.
    monkeypatch.chdir(workdir)
    url, restricted = _store_made_by_another_role(roles, workdir)
    dbname = url.rsplit("/", 1)[1]
    try:
        code, out, err = _list(restricted, workdir, monkeypatch)
        assert (code, err) == (0, ""), err  # reading is granted
        assert out.startswith("1\tan@example.org")
        done = CliRunner().invoke(
            cli, ["subscribers", "add", "lan@example.org"], catch_exceptions=False
        )
        assert (done.exit_code, done.stdout) == (2, "")
        assert done.stderr == (
            f"Error: PostgreSQL at 127.0.0.1:{roles.port}/{dbname}: subscriber query failed: "
            f"permission denied for table subscribers. {_DENIED_HINT}\n"
        )
        assert PASSWORD not in done.stderr
    finally:
        roles.drop_database(url)


def test_serve_answers_503_not_500_when_the_role_lacks_a_right(
    roles: Cluster, workdir: Path, now: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    import httpx

    from syndicate.config import load_settings
    from tests.plugins.web import start_live_server

    url, restricted = _store_made_by_another_role(roles, workdir)
    try:
        # Its own secret: the role may not store the generated one (that fails at start).
        environ = {ENV_STORE_URL: restricted, "SYNDICATE_SECRET": "s" * 32}
        settings = load_settings(None, environ, cwd=workdir)
        with ExitStack() as stack:
            server = start_live_server(stack, settings, now)
            origin = server.url.rstrip("/")
            answer = httpx.post(
                server.url + "subscribe",
                data={"email": "lan@example.org", "language": "vi"},
                headers={"Origin": origin},
            )
        assert answer.status_code == 503
        assert "retry-after" in answer.headers
        [record] = [r for r in caplog.records if "permission denied" in r.getMessage()]
        assert record.exc_info is None  # one line, no traceback
        assert record.getMessage().endswith(_DENIED_HINT)
    finally:
        roles.drop_database(url)


def test_a_role_that_may_not_make_the_tables_is_told_the_documented_grant(
    roles: Cluster, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new database the role may connect to but not create in: PostgreSQL 15's default
    # (USAGE on public for all, CREATE for its owner), then not even USAGE.
    url = roles.new_database()
    dbname = url.rsplit("/", 1)[1]
    hint = (
        "The role in store.url or SYNDICATE_STORE_URL (or the URL given to `store copy`) may "
        "not make tables in schema public: have the database's owner GRANT USAGE, CREATE ON "
        "SCHEMA public TO it, or make the role the database's owner (docs/operating.md, "
        "Moving to PostgreSQL). Trying again will not help until this is fixed."
    )
    where = f"PostgreSQL at 127.0.0.1:{roles.port}/{dbname}"
    monkeypatch.chdir(workdir)
    monkeypatch.setenv(ENV_STORE_URL, _url(roles, ASKED, PASSWORD, dbname))
    try:
        for grant, reason in [
            ("GRANT USAGE ON SCHEMA public TO PUBLIC", "permission denied for schema public"),
            (
                "REVOKE USAGE ON SCHEMA public FROM PUBLIC",
                "no schema has been selected to create in",
            ),
        ]:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                admin.execute(grant)
            done = CliRunner().invoke(
                cli, ["subscribers", "add", "an@example.org"], catch_exceptions=False
            )
            assert (done.exit_code, done.stdout) == (2, "")
            assert done.stderr == (
                f"Error: {where}: not a usable syndicate database: {reason}. {hint}\n"
            )
    finally:
        roles.drop_database(url)
