"""Settings: embedded defaults, TOML overrides, environment, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from syndicate.config import (
    Settings,
    base_url,
    email_templates_dir,
    find_config,
    load_settings,
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
            "data_timeout, host, messages_per_connection, port, rate, retry_window, timeout, "
            "tls, username.",
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
            "paths, site, smtp, subscribe.",
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


def test_config_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "syndicate.toml"
    path.write_bytes(b"[site]\ntitle = '\xff'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {}, cwd=tmp_path)
    assert str(info.value).endswith(
        "is not UTF-8 text (invalid start byte at byte 16). Save it as UTF-8."
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
