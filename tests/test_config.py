"""Settings: embedded defaults, TOML overrides, environment, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
from click.testing import CliRunner

from syndicate.cli import cli
from syndicate.config import (
    Settings,
    base_url,
    email_templates_dir,
    find_config,
    load_settings,
    make_environment,
    site_templates_dir,
)
from syndicate.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "syndicate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_need_no_config_file(tmp_path: Path) -> None:
    settings = load_settings(None, {}, cwd=tmp_path)
    assert settings.site.base_url == "http://localhost:8000/"
    assert settings.site.language == "vi"
    assert settings.site.timezone == "Asia/Ho_Chi_Minh"
    assert settings.paths.seeds == tmp_path / "seeds"
    assert settings.paths.output == tmp_path / "feeds"
    assert settings.feeds.limit == 50
    assert settings.mail.transport == "outbox"
    assert settings.smtp.connections == 8
    assert settings.digest.max_age_hours == 48


def test_relative_paths_are_relative_to_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "site.toml"
    path.write_text('[paths]\nseeds = "dumps"\n', encoding="utf-8")
    settings = load_settings(path, {}, cwd=tmp_path)
    assert settings.paths.seeds == tmp_path / "conf" / "dumps"
    assert settings.paths.output == tmp_path / "conf" / "feeds"


def test_values_override_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[site]\ntitle = "Báo Thử"\nbase_url = "https://news.example.org"\n'
        "[feeds]\nlimit = 5\n[smtp]\nrate = 2\n",
    )
    settings = load_settings(path, {}, cwd=tmp_path)
    assert settings.site.title == "Báo Thử"
    assert base_url(settings) == "https://news.example.org/"
    assert settings.feeds.limit == 5
    assert settings.smtp.rate == 2.0


def test_environment_supplies_secret_and_smtp_password(tmp_path: Path) -> None:
    settings = load_settings(
        None, {"SYNDICATE_SECRET": "s3", "SYNDICATE_SMTP_PASSWORD": "pw"}, cwd=tmp_path
    )
    assert settings.secret == "s3"
    assert settings.smtp.password == "pw"
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[site]\ncolour = 1\n",
            "config key site.colour is not known; keys of [site] are: base_url, description, "
            "language, page_size, timezone, title.",
        ),
        (
            "[smtp]\nport = 'abc'\n",
            "config key smtp.port has value 'abc'; expected a whole number like 587.",
        ),
        (
            "[smtp]\npassword = 'x'\n",
            "config key smtp.password is not known; keys of [smtp] are: connections, "
            "data_timeout, host, lease, messages_per_connection, port, rate, retry_window, "
            "timeout, tls, username.",
        ),
        (
            "[mail]\ntransport = 'pigeon'\n",
            "config key mail.transport has value 'pigeon'; expected one of 'outbox', 'smtp'.",
        ),
        (
            "[site]\ntimezone = 'Mars/Base'\n",
            "config key site.timezone has value 'Mars/Base'; "
            "expected an IANA zone like 'Asia/Ho_Chi_Minh'.",
        ),
        (
            "[feeds]\nlimit = 0\n",
            "config key feeds.limit has value 0; expected 1 or more.",
        ),
        (
            "[nope]\n",
            "config section [nope] is not known; sections are: digest, dkim, feeds, load, mail, "
            "paths, site, smtp, store, subscribe.",
        ),
        (
            "[mail]\ntransport = 'smtp'\n",
            "config key mail.from is empty, but mail.transport is 'smtp'. "
            'Set it to the sender, like from = "News <news@example.org>".',
        ),
        (
            "[feeds]\nlimit = 'many'\n",
            "config key feeds.limit has value 'many'; expected a whole number like 50.",
        ),
        (
            "[feeds]\nlimit = -1\n",
            "config key feeds.limit has value -1; expected 1 or more.",
        ),
        (
            "[smtp]\nrate = -1\n",
            "config key smtp.rate has value -1; expected 0 or more.",
        ),
        (
            "[site]\ntitle = '  '\n",
            "config key site.title is empty; feeds and pages need a title. "
            'Set it, like title = "Tin mới".',
        ),
        (
            "title = 'x'\n",
            "config key 'title' is outside any section. "
            "Put it under its [section], for example [site] for title.",
        ),
        (
            "[site]\nbase_url = 'https://x.org/?a=1'\n",
            "config key site.base_url has value 'https://x.org/?a=1'; expected a URL without "
            "query, fragment or spaces, like 'https://news.example.org/'.",
        ),
        (
            "[site]\nbase_url = 'ftp://x'\n",
            "config key site.base_url has value 'ftp://x'; expected an absolute http(s) URL "
            "like 'https://news.example.org/'.",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, {}, cwd=tmp_path)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[site]\nbase_url = 'http://[::1/'\n",
            "config key site.base_url has value 'http://[::1/'; expected an absolute http(s) URL "
            "like 'https://news.example.org/'.",
        ),
        (
            "[site]\nbase_url = 'https://news.example.org:99999/'\n",
            "config key site.base_url has value 'https://news.example.org:99999/'; "
            "its port '99999' is not a port number from 1 to 65535.",
        ),
        (
            "[site]\nbase_url = 'https://news.example.org:https/'\n",
            "config key site.base_url has value 'https://news.example.org:https/'; "
            "its port 'https' is not a port number from 1 to 65535.",
        ),
        (
            "[site]\nbase_url = 'https://news<example>.org/'\n",
            "config key site.base_url has value 'https://news<example>.org/'; "
            "its host 'news<example>.org' is not a host name or IP address.",
        ),
        (
            "[site]\nbase_url = 'https://news..example.org/'\n",
            "config key site.base_url has value 'https://news..example.org/'; "
            "its host 'news..example.org' is not a host name or IP address.",
        ),
        (
            "[site]\nbase_url = 'https://admin:hunter2@news.example.org/'\n",
            "config key site.base_url has credentials (user:password@) in it; expected a URL "
            "without them, like 'https://news.example.org/'.",
        ),
        (
            "[smtp]\nport = 70000\n",
            "config key smtp.port has value 70000; expected a port number from 1 to 65535.",
        ),
        (
            "[smtp]\nport = 0\n",
            "config key smtp.port has value 0; expected a port number from 1 to 65535.",
        ),
        (
            '[site]\ntitle = "Tin\\nBcc: x@example.org"\n',
            "config key site.title has value 'Tin\\nBcc: x@example.org'; expected one line of "
            "text without control characters (found '\\n').",
        ),
        (
            '[site]\ndescription = "Tin \\u0007 mới"\n',
            "config key site.description has value 'Tin \\x07 mới'; expected one line of text "
            "without control characters (found '\\x07').",
        ),
        (
            '[site]\ntitle = "Tin \u202egnp.exe"\n',
            "config key site.title has value 'Tin \\u202egnp.exe'; expected one line of "
            "text without control characters (found '\\u202e').",
        ),
        (
            '[site]\ndescription = "Tin \u2066mới\u2069"\n',
            "config key site.description has value 'Tin \\u2066mới\\u2069'; expected one "
            "line of text without control characters (found '\\u2066').",
        ),
        (
            '[site]\ntitle = "Tin \u202amới"\n',
            "config key site.title has value 'Tin \\u202amới'; expected one line of "
            "text without control characters (found '\\u202a').",
        ),
        (
            "[smtp]\ntimeout = 0\n",
            "config key smtp.timeout has value 0; expected a number above 0, like 30.0.",
        ),
        (
            "[smtp]\ntimeout = -2.5\n",
            "config key smtp.timeout has value -2.5; expected a number above 0, like 30.0.",
        ),
        (
            "[smtp]\ntimeout = nan\n",
            "config key smtp.timeout has value nan; expected a finite number like 30.0.",
        ),
        (
            "[smtp]\ntimeout = inf\n",
            "config key smtp.timeout has value inf; expected a finite number like 30.0.",
        ),
        (
            "[mail]\ntransport = 'smtp'\nfrom = 'tin@example.org'\n[smtp]\nhost = ''\n",
            "config key smtp.host is empty, but mail.transport is 'smtp'. "
            'Set it to the mail server, like host = "smtp.example.org".',
        ),
    ],
)
def test_bad_values_that_used_to_crash_later_are_one_line_and_exit_2(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, {}, cwd=tmp_path)
    assert str(info.value) == message
    result = CliRunner().invoke(cli, ["--config", str(path), "build"])
    assert result.exit_code == 2
    assert result.output == f"Error: {message}\n"


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]:8000/",
        "http://127.0.0.1:8000/news/",
        "https://tin.báo.vn/",
        "http://intranet_host.local/",
        "https://news.example.org./",
    ],
)
def test_unusual_but_valid_base_urls_are_accepted(tmp_path: Path, url: str) -> None:
    path = _write(tmp_path, f"[site]\nbase_url = {url!r}\n")
    assert load_settings(path, {}, cwd=tmp_path).site.base_url == url


def test_an_empty_smtp_host_is_fine_with_the_outbox(tmp_path: Path) -> None:
    path = _write(tmp_path, "[smtp]\nhost = ''\n")
    assert load_settings(path, {}, cwd=tmp_path).smtp.host == ""


def test_config_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "syndicate.toml"
    path.write_bytes(b"[site]\ntitle = '\xff'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {}, cwd=tmp_path)
    assert str(info.value).endswith(
        "is not UTF-8 text (invalid start byte at byte 16). Save it as UTF-8."
    )


def test_a_config_saved_with_a_byte_order_mark_says_so(tmp_path: Path) -> None:
    # Windows Notepad saves "UTF-8 with BOM"; tomllib then refused the first line as "Invalid
    # statement (at line 1, column 1)", and the hint said to fix a syntax that was fine.
    path = tmp_path / "syndicate.toml"
    path.write_bytes(b"\xef\xbb\xbf[site]\ntitle = 'Tin m\xe1\xbb\x9bi'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {}, cwd=tmp_path)
    assert str(info.value) == (
        f"config file {str(path)!r} starts with a byte-order mark (U+FEFF), which TOML does "
        "not allow. Save it as UTF-8 without BOM (in Notepad: 'UTF-8', not 'UTF-8 with BOM')."
    )


def test_a_section_that_is_not_a_table_says_how_to_write_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "site = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {}, cwd=tmp_path)
    assert str(info.value) == (
        "config section [site] must be a table, not 3. Write it as a [site] line with its "
        "keys below it, like syndicate.example.toml."
    )


def test_invalid_toml_is_one_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "[site\n")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_settings(path, {}, cwd=tmp_path)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", {}, cwd=tmp_path)


def test_find_config_order(tmp_path: Path) -> None:
    assert find_config(None, {}, tmp_path) is None
    local = _write(tmp_path, "")
    assert find_config(None, {}, tmp_path) == local
    assert find_config(None, {"SYNDICATE_CONFIG": "/x.toml"}, tmp_path) == Path("/x.toml")
    assert find_config(Path("/y.toml"), {"SYNDICATE_CONFIG": "/x.toml"}, tmp_path) == Path(
        "/y.toml"
    )


def test_templates_resolve_to_the_shipped_folders(tmp_path: Path) -> None:
    settings = Settings()
    assert email_templates_dir(settings).name == "email"
    assert site_templates_dir().name == "site"
    custom = load_settings(_write(tmp_path, '[digest]\ntemplates_dir = "mine"\n'), {}, cwd=tmp_path)
    assert email_templates_dir(custom) == tmp_path / "mine"


def test_the_template_environment_escapes_every_template_but_text_parts(tmp_path: Path) -> None:
    (tmp_path / "page.html.j2").write_text("{{ x }}", encoding="utf-8")
    (tmp_path / "_part.j2").write_text("{{ x }}", encoding="utf-8")
    (tmp_path / "mail.txt.j2").write_text("{{ x }}\n", encoding="utf-8")
    env = make_environment(tmp_path)
    assert env.get_template("page.html.j2").render(x="<b>") == "&lt;b&gt;"
    assert env.get_template("_part.j2").render(x="<b>") == "&lt;b&gt;"
    assert env.get_template("mail.txt.j2").render(x="<b>") == "<b>\n"
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("page.html.j2").render()
