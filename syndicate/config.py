"""Settings: a frozen tree of embedded defaults, overridden by a TOML file and the environment.

`load_settings(path, environ)` is the only place that reads the config file or the
environment; everything else receives a `Settings` object.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import shlex
import stat
import sys
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from syndicate.errors import ConfigError

if TYPE_CHECKING:
    import jinja2

CONFIG_FILE_NAME = "syndicate.toml"
ENV_CONFIG = "SYNDICATE_CONFIG"
ENV_SECRET = "SYNDICATE_SECRET"  # noqa: S105 - the name of a variable, not a secret
ENV_SMTP_PASSWORD = "SYNDICATE_SMTP_PASSWORD"  # noqa: S105
ENV_STORE_URL = "SYNDICATE_STORE_URL"


@dataclass(frozen=True, slots=True)
class SiteSettings:
    """The site: its name, address, language and clock."""

    title: str = field(
        default="Tin mới",
        metadata={
            "doc": "feed and page title; one line, no control characters; when not set, "
            "`News` on a site whose `language` is `en`"
        },
    )
    description: str = field(
        default="Tin tức mới nhất, tổng hợp bởi syndicate.",
        metadata={
            "doc": "feed description, index subtitle; one line, no control characters; "
            "when not set, `The latest news, gathered by syndicate.` on a site whose "
            "`language` is `en` (and on the English pages of `serve`)"
        },
    )
    base_url: str = field(
        default="http://localhost:8000/",
        metadata={
            "doc": "absolute URL the site is served under; every link and feed id derives "
            "from it. A valid host name or IP address, a port from 1 to 65535 if any, "
            "no `user:password@`"
        },
    )
    language: str = field(
        default="vi", metadata={"doc": "language of feeds and pages: `vi` or `en`"}
    )
    timezone: str = field(
        default="Asia/Ho_Chi_Minh",
        metadata={
            "doc": "IANA zone for dates without an offset, for display, and for the digest's day"
        },
    )
    page_size: int = field(
        default=30,  # articles per index page before archive pages start
        metadata={
            "doc": "articles on the index page and on each archive page (`page/1.html`, "
            "the oldest, `page/2.html`, ...)"
        },
    )

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class PathSettings:
    """Where syndicate reads and writes: relative to the config file's folder, else to the cwd."""

    seeds: Path = field(default=Path("seeds"), metadata={"doc": "where the dumps are read"})
    output: Path = field(
        default=Path("feeds"), metadata={"doc": "where feeds and pages are written"}
    )
    database: Path = field(
        default=Path("syndicate.db"),
        metadata={"doc": "the SQLite database: build cache, articles, subscribers, send ledger"},
    )
    outbox: Path = field(
        default=Path("outbox"),
        metadata={"doc": "where the `outbox` transport writes `.eml` files"},
    )


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """Reading the dumps."""

    max_bytes: int = field(
        default=10 * 1024 * 1024,  # dumps larger than this are skipped
        metadata={"doc": "dumps larger than this (10 MiB) are skipped"},
    )
    # Read dumps whose link leads out of the dump folder (off by default: a link in the
    # seeds folder must not make the site publish any file the build can read).
    follow_symlinks: bool = field(
        default=False,
        metadata={
            "doc": "`true` reads dumps whose link leads outside the dump folder "
            "(skipped with a warning otherwise)"
        },
    )


@dataclass(frozen=True, slots=True)
class FeedSettings:
    """The RSS, Atom and JSON feeds."""

    limit: int = field(default=50, metadata={"doc": "items per feed"})


@dataclass(frozen=True, slots=True)
class MailSettings:
    """The digest message and how it is delivered."""

    transport: str = field(
        default="outbox",
        metadata={"doc": "`outbox` (write `.eml` files, no server needed) or `smtp`"},
    )
    from_: str = field(
        default="",
        metadata={
            "doc": "the From address; required for `smtp` (the outbox uses "
            "`newsletter@localhost`); an address without a name is shown under `site.title`"
        },
    )
    reply_to: str = field(
        default="",
        metadata={
            "doc": "Reply-To header, when set: one or more addresses, checked like `mail.from`"
        },
    )
    subject: str = field(
        default="{site}: {headline} {more}",
        metadata={
            "doc": "subject template; `{site}` is `site.title`, `{date}` the digest day in "
            "the reader's language, as papers write it"
            ' ("Thứ Hai, 7/12/2026", "December 7, '
            '2026"), `{headline}` the top story (shortened to keep the subject within 78 '
            "characters, a quotation it cuts closed after the …), `{more}` "
            '"và N tin khác" / "and N more" (empty for one article; "(+N)" after a '
            "headline in another language than the reader's)"
        },
    )
    list_id: str = field(
        default="", metadata={"doc": "List-Id header; empty derives one from `site.base_url`"}
    )
    postal_address: str = field(
        default="",
        metadata={
            "doc": "the sender's postal address, shown in every digest footer; bulk-mail "
            "rules (CAN-SPAM and the like) want one, so `send` over SMTP warns while it "
            "is empty"
        },
    )
    secret: str = field(
        default="",
        metadata={
            "doc": "signing secret when `SYNDICATE_SECRET` is not set; when both are empty "
            "one is generated into the database on first use; under 16 bytes, every "
            "command warns"
        },
    )
    bounce_limit: int = field(
        default=3,
        metadata={
            "doc": "permanent refusals in a row after which a subscriber becomes `bounced` "
            "(a delivered message resets the count); also the number of digests in a row "
            "with soft bounces read by `syndicate bounces`"
        },
    )
    # Envelope sender for digests; when set, each message's is a VERP address
    # local+<token>@domain naming its subscriber and digest ("" = mail.from's address).
    bounce_address: str = field(
        default="",
        metadata={
            "doc": "envelope sender for digests: each message's becomes a VERP address "
            "`local+<token>@domain` naming its subscriber and digest, for "
            "`syndicate bounces`; empty uses `mail.from`'s address (`preflight` checks "
            "this domain's SPF)"
        },
    )
    mailto_unsubscribe: str = field(
        default="",  # optional mailto: address added to List-Unsubscribe
        metadata={"doc": "optional address added to `List-Unsubscribe` as a `mailto:`"},
    )

    @property
    def sender(self) -> str:
        """The From address; the outbox transport has a harmless default (shown, as any
        address without a name, under `site.title`: mail.MailInfo)."""
        return self.from_ or "newsletter@localhost"


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """The SMTP server, for `mail.transport = "smtp"`."""

    host: str = field(
        default="localhost",
        metadata={"doc": 'SMTP server; may not be empty with `mail.transport = "smtp"`'},
    )
    port: int = field(default=587, metadata={"doc": "SMTP port, 1 to 65535"})
    tls: str = field(
        default="starttls",
        metadata={"doc": "`starttls`, `tls` (implicit TLS) or `none`"},
    )
    username: str = field(
        default="",
        metadata={"doc": "SMTP login; the password comes only from `SYNDICATE_SMTP_PASSWORD`"},
    )
    timeout: float = field(
        default=30.0,
        metadata={
            "doc": "seconds to wait for the reply to an SMTP command (not the reply after "
            "the message body: `smtp.data_timeout`); a finite number above 0"
        },
    )
    connections: int = field(
        default=8, metadata={"doc": "persistent SMTP connections used in parallel"}
    )
    messages_per_connection: int = field(
        default=100,
        metadata={"doc": "messages sent over one connection before it is renewed"},
    )
    rate: float = field(
        default=0.0,
        metadata={"doc": "messages per second across all connections; `0` = no limit"},
    )
    retry_window: float = field(
        default=300.0,  # seconds a run keeps retrying deferred recipients
        metadata={
            "doc": "seconds a run keeps retrying deferred (4xx) recipients after the first pass"
        },
    )
    data_timeout: float = field(
        default=600.0,  # seconds to wait for the reply after the message body
        metadata={
            "doc": "seconds to wait for the reply after the message body (RFC 5321); above 0"
        },
    )
    lease: float = field(
        default=60.0,  # seconds a send worker's claim on a batch of recipients lasts
        metadata={
            "doc": "seconds a send worker's claim on its batch of recipients lasts unless "
            "renewed; a dead worker's batch is taken over once it runs out; above 0"
        },
    )
    password: str = field(default="", repr=False)  # only from SYNDICATE_SMTP_PASSWORD


@dataclass(frozen=True, slots=True)
class DigestSettings:
    """What goes into the daily digest."""

    max_articles: int = field(
        default=20,
        metadata={"doc": 'articles in one digest; the rest are named as "and N more"'},
    )
    max_teasers: int = field(
        default=5,  # "Other news" items; 0 hides the section
        metadata={
            "doc": '"Tin khác" / "Other news" items in a digest, linked ones first; `0` '
            "hides the section"
        },
    )
    max_age_hours: int = field(
        default=48,
        metadata={
            "doc": "articles published more than this before the newest article are never mailed"
        },
    )
    lead_words: int = field(
        default=60,
        metadata={
            "doc": "the lead of each article is cut at a sentence boundary to at most "
            "this many words"
        },
    )
    templates_dir: Path | None = field(
        default=None,
        metadata={
            "doc": "a folder of your own email templates; empty = the shipped `templates/email`"
        },
    )


@dataclass(frozen=True, slots=True)
class DkimSettings:
    """Optional DKIM signing of every digest."""

    domain: str = field(
        default="", metadata={"doc": "DKIM signing domain; signing is off while empty"}
    )
    selector: str = field(default="", metadata={"doc": "DKIM selector"})
    key_file: Path | None = field(
        default=None,
        metadata={"doc": "PEM private key for DKIM; mode `0600` or `0400`"},
    )


@dataclass(frozen=True, slots=True)
class SubscribeSettings:
    """Sign-up through `syndicate serve`."""

    confirm_hours: int = field(
        default=48,
        metadata={
            "doc": "how long a confirmation link stays valid; `send` deletes a sign-up left "
            "unconfirmed past it (and at least 24 hours), or puts one who had left back as "
            "they were"
        },
    )
    rate_limit: int = field(
        default=10,  # sign-up POSTs per client address per minute
        metadata={
            "doc": "sign-up requests per client address (IPv6: per /64) per minute, counted "
            "in the database for every `serve` on it; `0` turns the limit off"
        },
    )
    resend_minutes: int = field(
        default=10,  # a repeat sign-up re-sends the confirmation at most this often
        metadata={"doc": "a repeated sign-up re-sends the confirmation at most this often"},
    )


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """The database."""

    # Empty: the SQLite file at paths.database. Else a libpq URL of a PostgreSQL database.
    url: str = field(
        default="",
        repr=False,  # it may carry a password
        metadata={
            "doc": "empty for the SQLite file at `paths.database`; a "
            "`postgresql://user@host:port/dbname` URL for a PostgreSQL store shared by "
            "several machines. `SYNDICATE_STORE_URL` wins over it, so a password need "
            "not be in this file"
        },
    )

    # Seconds a command waits for another's write lock before it gives up (exit 75, HTTP 503).
    busy_timeout: float = field(
        default=10.0,
        metadata={
            "doc": "seconds a command or request waits for another's write lock before "
            "it gives up (exit 75, HTTP 503)"
        },
    )

    # Seconds a PostgreSQL server may stay silent while a statement waits for its reply.
    reply_timeout: float = field(
        default=120.0,
        metadata={
            "doc": "PostgreSQL only: seconds the server may send nothing while a statement "
            "waits for its reply; then it is taken as gone (exit 75, HTTP 503). The server "
            "ends a write transaction whose client sends nothing that long, so a stalled "
            "machine does not hold the write lock. More than `store.busy_timeout` and than "
            "the slowest statement; `0` waits for ever"
        },
    )


@dataclass(frozen=True, slots=True)
class Settings:
    site: SiteSettings = field(default_factory=SiteSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    load: LoadSettings = field(default_factory=LoadSettings)
    feeds: FeedSettings = field(default_factory=FeedSettings)
    mail: MailSettings = field(default_factory=MailSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    digest: DigestSettings = field(default_factory=DigestSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    subscribe: SubscribeSettings = field(default_factory=SubscribeSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    config_path: Path | None = None
    env_secret: str = field(default="", repr=False)  # SYNDICATE_SECRET
    # What gave store.url, as the store's hints name it: the config key or the variable.
    store_url_from: str = "store.url"

    @property
    def secret(self) -> str:
        """The signing secret from the environment or config ('' = use the database's)."""
        return self.env_secret or self.mail.secret


# Keys a TOML file may not set: filled from the environment only.
_ENV_ONLY = {("smtp", "password")}

_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("mail", "transport"): ("outbox", "smtp"),
    ("smtp", "tls"): ("starttls", "tls", "none"),
    ("site", "language"): ("vi", "en"),
}

# Whole-number keys that must be at least 1 (the others may be 0).
_AT_LEAST_ONE = {
    ("feeds", "limit"),
    ("site", "page_size"),
    ("smtp", "connections"),
    ("smtp", "messages_per_connection"),
    ("smtp", "port"),
    ("digest", "max_articles"),
    ("digest", "lead_words"),
    ("load", "max_bytes"),
    ("subscribe", "confirm_hours"),
}

# The largest number any key takes: more is a slip (or a unit mix-up) that overflows the
# clock, the database or a C int deep inside a run, not a setting.
_MOST = 1_000_000_000
# Hours back from now: a million (over a century) keeps dates within year 1.
_MOST_HOURS = 1_000_000
_HOURS = {("digest", "max_age_hours"), ("subscribe", "confirm_hours")}
# Seconds handed on in milliseconds as a C int (SQLite's busy_timeout, which took a larger
# one as 0, and PostgreSQL's lock_timeout and statement_timeout, which refuse it): 24.8 days.
_MOST_MILLISECONDS = 2_147_483
_MILLISECONDS = {("store", "busy_timeout"), ("store", "reply_timeout")}

# Number keys that must be above 0 (a zero timeout would fail every command at once).
_ABOVE_ZERO = {("smtp", "timeout"), ("smtp", "data_timeout"), ("smtp", "lease")}

# One host label (after IDNA encoding): letters, digits, `_` and inner hyphens, 1 to 63 long.
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")

_EXAMPLES: dict[type, str] = {
    float: "a number like 2.5",
    str: 'a quoted string like "text"',
    Path: 'a path like "seeds"',
}


def _check_most(where: str, key: str, value: float, most: int) -> None:
    if value > most:
        raise ConfigError(f"{where} has value {value!r}; expected at most {most}.", key=key)


# Keys whose text readers see beside article text, which is NFC: an editor that saves
# decomposed Vietnamese (macOS) must not give pages and feeds other bytes than the digest.
# Never a secret, URL or path (their bytes are what they are).
_READER_TEXT = frozenset(
    {
        ("site", "title"),
        ("site", "description"),
        ("mail", "from"),
        ("mail", "reply_to"),
        ("mail", "subject"),
        ("mail", "list_id"),
        ("mail", "postal_address"),
    }
)


def _toml_key(name: str) -> str:
    return name.rstrip("_")


def _section_types() -> dict[str, type[Any]]:
    hints: dict[str, type[Any]] = {}
    for f in dataclasses.fields(Settings):
        factory = f.default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            hints[f.name] = factory
    return hints


def _convert(
    section: str, key: str, value: object, annotation: str, base: Path, default: object
) -> object:
    where = f"config key {section}.{key}"
    optional = annotation.endswith("| None")
    kind = annotation.replace("| None", "").strip()
    if kind == "Path":
        if not isinstance(value, str):
            raise ConfigError(f"{where} has value {value!r}; expected {_EXAMPLES[Path]}.", key=key)
        if optional and value == "":
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"{where} has value {value!r}; expected a whole number like {default}.", key=key
            )
        if (section, key) == ("smtp", "port") and not 1 <= value <= 65535:
            raise ConfigError(
                f"{where} has value {value!r}; expected a port number from 1 to 65535.", key=key
            )
        least = 1 if (section, key) in _AT_LEAST_ONE else 0
        if value < least:
            raise ConfigError(f"{where} has value {value!r}; expected {least} or more.", key=key)
        _check_most(where, key, value, _MOST_HOURS if (section, key) in _HOURS else _MOST)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} has value {value!r}; expected true or false.", key=key)
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} has value {value!r}; expected {_EXAMPLES[float]}.", key=key)
        if not math.isfinite(value):
            raise ConfigError(
                f"{where} has value {value!r}; expected a finite number like {default}.", key=key
            )
        if (section, key) in _ABOVE_ZERO and value <= 0:
            raise ConfigError(
                f"{where} has value {value!r}; expected a number above 0, like {default}.",
                key=key,
            )
        if value < 0:
            raise ConfigError(f"{where} has value {value!r}; expected 0 or more.", key=key)
        most = _MOST_MILLISECONDS if (section, key) in _MILLISECONDS else _MOST
        _check_most(where, key, value, most)
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where} has value {value!r}; expected {_EXAMPLES[str]}.", key=key)
    choices = _CHOICES.get((section, key))
    if choices and value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{where} has value {value!r}; expected one of {listed}.", key=key)
    if (section, key) in _READER_TEXT:
        return unicodedata.normalize("NFC", value)
    return value


def _build_section(section: str, cls: type[Any], raw: object, base: Path) -> object:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"config section [{section}] must be a table, not {raw!r}.",
            key=section,
            hint=f"Write it as a [{section}] line with its keys below it, like "
            "syndicate.example.toml.",
        )
    fields_by_key = {
        _toml_key(f.name): f for f in dataclasses.fields(cls) if (section, f.name) not in _ENV_ONLY
    }
    values: dict[str, object] = {}
    defaults = cls()
    for key, value in raw.items():
        fld = fields_by_key.get(key)
        if fld is None:
            known = ", ".join(sorted(fields_by_key))
            raise ConfigError(
                f"config key {section}.{key} is not known; keys of [{section}] are: {known}.",
                key=f"{section}.{key}",
            )
        default = getattr(defaults, fld.name)
        values[fld.name] = _convert(section, key, value, str(fld.type), base, default)
    # Relative default paths are relative to the config file's folder too.
    for fld in dataclasses.fields(cls):
        if fld.name not in values and str(fld.type) == "Path":
            default = getattr(defaults, fld.name)
            values[fld.name] = default if default.is_absolute() else base / default
    return cls(**values)


def find_config(explicit: Path | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """Pick the config file: --config, then $SYNDICATE_CONFIG, then ./syndicate.toml if present."""
    if explicit is not None:
        return explicit
    from_env = environ.get(ENV_CONFIG, "")
    if from_env:
        return Path(from_env)
    candidate = cwd / CONFIG_FILE_NAME
    return candidate if candidate.exists() else None  # not a file: refused when read


def _refuse_special_file(path: Path, mode: int) -> None:
    """Raise ConfigError unless `mode` is a regular file's."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        kind = "folder"
    elif stat.S_ISFIFO(mode):
        kind = "named pipe"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "device"
    else:
        kind = "socket" if stat.S_ISSOCK(mode) else "special file"
    raise ConfigError(
        f"config file {str(path)!r} is a {kind}, not a regular file.",
        hint="Point --config or SYNDICATE_CONFIG at a TOML file like syndicate.example.toml, "
        "or put one at ./syndicate.toml.",
    )


def _read_config_file(path: Path) -> str:
    """The config file's text (links followed). A named pipe, device or folder is refused
    before it is opened: reading a pipe waits for a writer, a device may never end."""
    _refuse_special_file(path, os.stat(path).st_mode)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with open(descriptor, encoding="utf-8") as handle:  # O_NONBLOCK: a pipe swapped in
        _refuse_special_file(path, os.fstat(descriptor).st_mode)  # since is not waited on
        return handle.read()


def load_settings(
    path: Path | None, environ: Mapping[str, str], *, cwd: Path | None = None
) -> Settings:
    """Build Settings from the defaults, the TOML file at `path` (if any) and the environment.

    Raises ConfigError naming the key for unknown keys, wrong types and bad values.
    """
    cwd = cwd or Path.cwd()
    raw: dict[str, Any] = {}
    base = cwd
    if path is not None:
        try:
            text = _read_config_file(path)
        except FileNotFoundError:
            raise ConfigError(
                f"config file {str(path)!r} does not exist.",
                hint="Check the path given by --config or SYNDICATE_CONFIG, "
                "or leave both out to use the defaults.",
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"config file {str(path)!r} cannot be read: {exc.strerror or exc}.",
                hint="Check the file's permissions.",
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}).",
                hint="Save it as UTF-8.",
            ) from exc
        if text.startswith("\ufeff"):
            raise ConfigError(
                f"config file {str(path)!r} starts with a byte-order mark (U+FEFF), which TOML "
                "does not allow.",
                hint="Save it as UTF-8 without BOM (in Notepad: 'UTF-8', not 'UTF-8 with BOM').",
            )
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"config file {str(path)!r} is not valid TOML: {exc}.",
                hint="Fix the syntax; see syndicate.example.toml for every key.",
            ) from exc
        base = path.resolve().parent
    sections = _section_types()
    built: dict[str, object] = {}
    for name, value in raw.items():
        if name not in sections and not isinstance(value, dict):
            raise ConfigError(
                f"config key {name!r} is outside any section.",
                key=name,
                hint="Put it under its [section], for example [site] for title.",
            )
        if name not in sections:
            raise ConfigError(
                f"config section [{name}] is not known; sections are: "
                f"{', '.join(sorted(sections))}.",
                key=name,
            )
        built[name] = _build_section(name, sections[name], value, base)
    for name, cls in sections.items():
        if name not in built:
            built[name] = _build_section(name, cls, {}, base)
    built["site"] = _site_in_its_language(built["site"], raw.get("site", {}))  # type: ignore[arg-type]
    smtp = dataclasses.replace(
        built["smtp"],  # type: ignore[type-var]
        password=_from_env(environ, ENV_SMTP_PASSWORD),
    )
    built["smtp"] = smtp
    store_url = _from_env(environ, ENV_STORE_URL)
    if store_url:
        built["store"] = dataclasses.replace(built["store"], url=store_url)  # type: ignore[type-var]
    settings = Settings(
        config_path=path.resolve() if path is not None else None,
        env_secret=_from_env(environ, ENV_SECRET),
        store_url_from=ENV_STORE_URL if store_url else "store.url",
        **built,  # type: ignore[arg-type]
    )
    _check(settings)
    return settings


# The default title and description are Vietnamese, like the default language; an English
# site that sets neither is not named in Vietnamese on every page, feed and mail.
_ENGLISH_SITE = {"title": "News", "description": "The latest news, gathered by syndicate."}
# syndicate's own descriptions of a site, in each language (describe_site).
_DESCRIPTIONS = {"vi": SiteSettings().description, "en": _ENGLISH_SITE["description"]}


def describe_site(site: SiteSettings, lang: str) -> tuple[str, str]:
    """The site's description for a page in `lang`, and the language it is in.

    syndicate's own default (the file set none) is said in `lang`; a description the
    operator wrote is theirs, in the site's language, on every page.
    """
    if site.description in _DESCRIPTIONS.values() and lang in _DESCRIPTIONS:
        return _DESCRIPTIONS[lang], lang
    return site.description, site.language


def _site_in_its_language(site: SiteSettings, raw: Mapping[str, object]) -> SiteSettings:
    """`site` with the English title and description where the file sets none and the
    site's language is English."""
    if site.language != "en":
        return site
    english = {key: text for key, text in _ENGLISH_SITE.items() if key not in raw}
    return dataclasses.replace(site, **english) if english else site  # type: ignore[arg-type]


def _from_env(environ: Mapping[str, str], name: str) -> str:
    """The value of the environment variable `name` ('' when unset); it must be UTF-8."""
    value = environ.get(name, "")
    try:
        value.encode("utf-8")  # bytes that are not UTF-8 arrive as lone surrogates
    except UnicodeEncodeError:
        raise ConfigError(
            f"environment variable {name} is not UTF-8 text (its value is not shown).",
            hint="Set it again as UTF-8 text.",
        ) from None
    return value


def _valid_host(host: str) -> bool:
    """True for a DNS name (IDNA allowed), an IPv4 address or a bracketed IPv6 one."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    try:
        ascii_host = host.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return False
    labels = ascii_host.split(".")
    return len(ascii_host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _check_base_url(url: str) -> None:
    where = f"config key site.base_url has value {url!r}"
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced '[' in the host
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"{where}; expected an absolute http(s) URL like 'https://news.example.org/'.",
            key="site.base_url",
        )
    _userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        # Every link and mail would carry the credentials, in clear.
        raise ConfigError(
            "config key site.base_url has credentials (user:password@) in it; expected a "
            "URL without them, like 'https://news.example.org/'.",
            key="site.base_url",
        )
    host, colon, port = hostport, "", ""
    if not hostport.endswith("]"):
        host, colon, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if not _valid_host(host):
        raise ConfigError(
            f"{where}; its host {host!r} is not a host name or IP address.",
            key="site.base_url",
        )
    if colon and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(
            f"{where}; its port {port!r} is not a port number from 1 to 65535.",
            key="site.base_url",
        )


# Bidi embedding, override and isolate controls (U+202A-U+202E, U+2066-U+2069): in a
# title they flip the text around them in mail clients and feed readers (spoofing).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _control_character(text: str) -> str | None:
    """The first control character in `text` (line breaks, tabs, bidi controls), if any."""
    for char in text:
        if char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return char
    return None


def _check(settings: Settings) -> None:
    url = settings.store.url
    store = settings.store
    if store.reply_timeout and store.reply_timeout <= store.busy_timeout:
        # A wait for another's lock is silence too: it would be called a lost server.
        raise ConfigError(
            f"config key store.reply_timeout has value {store.reply_timeout:g}; expected more "
            f"than store.busy_timeout ({store.busy_timeout:g}), or 0 for no bound.",
            key="store.reply_timeout",
        )
    # The scheme by hand, as libpq reads it (lower case only): urlsplit raises on what libpq
    # reads (several hosts) or refuses (the store says why, without the URL).
    if url and url.partition("://")[0] not in ("postgresql", "postgres"):
        # The value is not echoed: it may carry a password.
        raise ConfigError(
            "config key store.url (or SYNDICATE_STORE_URL) is not a PostgreSQL URL; expected "
            "empty (the SQLite file at paths.database) or 'postgresql://user@host:port/dbname'.",
            key="store.url",
        )
    site = settings.site
    _check_base_url(site.base_url)
    parts = urlsplit(site.base_url)
    try:
        ZoneInfo(site.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"config key site.timezone has value {site.timezone!r}; "
            "expected an IANA zone like 'Asia/Ho_Chi_Minh'.",
            key="site.timezone",
        ) from None
    if parts.query or parts.fragment or any(c.isspace() for c in site.base_url):
        raise ConfigError(
            f"config key site.base_url has value {site.base_url!r}; "
            "expected a URL without query, fragment or spaces, like 'https://news.example.org/'.",
            key="site.base_url",
        )
    if not site.title.strip():
        raise ConfigError(
            "config key site.title is empty; feeds and pages need a title.",
            key="site.title",
            hint='Set it, like title = "Tin mới".',
        )
    for key, text in (("title", site.title), ("description", site.description)):
        bad = _control_character(text)
        if bad is not None:
            # It would reach feed XML (where most are illegal) and mail headers.
            raise ConfigError(
                f"config key site.{key} has value {text!r}; expected one line of text "
                f"without control characters (found {bad!r}).",
                key=f"site.{key}",
            )
    if settings.mail.transport == "smtp" and not settings.smtp.host.strip():
        raise ConfigError(
            "config key smtp.host is empty, but mail.transport is 'smtp'.",
            key="smtp.host",
            hint='Set it to the mail server, like host = "smtp.example.org".',
        )
    if settings.mail.transport == "smtp" and not settings.mail.from_:
        raise ConfigError(
            "config key mail.from is empty, but mail.transport is 'smtp'.",
            key="mail.from",
            hint='Set it to the sender, like from = "News <news@example.org>".',
        )
    dkim = settings.dkim
    if dkim.domain and (not dkim.selector or dkim.key_file is None):
        raise ConfigError(
            "config key dkim.domain is set, but dkim.selector or dkim.key_file is empty.",
            key="dkim.selector",
            hint="Set all three to sign, or leave dkim.domain empty.",
        )


# The shortest signing secret set by hand that is not warned about: 16 random bytes are
# beyond guessing, a short word is not. Refusing shorter ones would break the links in mail
# already sent, so they are warned about (the generated secret is 32 random bytes).
MIN_SECRET_BYTES = 16


def weak_secret_warning(settings: Settings) -> str | None:
    """One warning line when the operator's signing secret is short enough to guess."""
    length = len(settings.secret.encode("utf-8"))
    if not settings.secret or length >= MIN_SECRET_BYTES:
        return None
    where = (
        f"environment variable {ENV_SECRET}" if settings.env_secret else "config key mail.secret"
    )
    return (
        f"{where} is {length} byte{'' if length == 1 else 's'} long: anyone who guesses it "
        "can forge sign-up, confirm and unsubscribe tokens. Set it to "
        f"{MIN_SECRET_BYTES} bytes or more (like the output of `openssl rand -base64 32`), "
        "or unset it to use the one syndicate makes; either way, the links in mail already "
        "sent stop working."
    )


def exposed_secret_warning(
    path: Path | None, settings: Settings, environ: Mapping[str, str]
) -> str | None:
    """One warning line when the config file holds a secret and every user may read it.

    The signing secret (mail.secret) signs every unsubscribe and confirm link: another
    user of the machine who reads it forges them, for any subscriber (a version 1 link
    names no nonce). A password in store.url opens the store itself. Only the others'
    read bit counts: a group shared with `serve` running as another user is deliberate.
    """
    if path is None:
        return None
    held: list[tuple[str, str, str]] = []
    if settings.mail.secret:
        held.append(
            (
                "the signing secret (mail.secret)",
                "whoever reads the signing secret can forge unsubscribe and confirm links "
                "for every subscriber",
                ENV_SECRET,
            )
        )
    if not environ.get(ENV_STORE_URL) and _url_password(settings.store.url):
        held.append(
            (
                "the store's password (store.url)",
                "whoever reads the password can read and change every subscriber's data",
                ENV_STORE_URL,
            )
        )
    if not held:
        return None
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if not mode & stat.S_IROTH:
        return None
    names = " and ".join(name for name, _, _ in held)
    harm = "; ".join(what for _, what, _ in held)
    variables = " and ".join(variable for _, _, variable in held)
    quoted = shlex.quote(str(path))
    return (
        f"config file {path} holds {names} and every user of this machine may read it "
        f"(mode {mode:04o}): {harm}. Run chmod 600 {quoted} (640 to share it with a group), "
        f"or set {variables} in the environment instead."
    )


def _url_password(url: str) -> bool:
    """Whether a store URL holds a password: after the user (`user:pw@`), or in the query
    (`?password=pw`), where libpq takes it from as well."""
    parts = urlsplit(url)
    return bool(parts.password) or any(
        key == "password" and value for key, value in parse_qsl(parts.query)
    )


def base_url(settings: Settings) -> str:
    """The site's base URL, always ending in '/'."""
    url = settings.site.base_url
    return url if url.endswith("/") else url + "/"


def templates_root() -> Path:
    """The shipped templates folder: the source checkout's, else the installed copy."""
    here = Path(__file__).resolve().parent.parent / "templates"
    if here.is_dir():
        return here
    installed = Path(sys.prefix) / "share" / "syndicate" / "templates"
    if installed.is_dir():
        return installed
    raise ConfigError(
        "the shipped templates folder is missing.",
        hint="Reinstall syndicate (pip install .) so that templates/ is installed with it.",
    )


def email_templates_dir(settings: Settings) -> Path:
    """Where the digest and confirmation email templates are read from."""
    return settings.digest.templates_dir or templates_root() / "email"


def site_templates_dir() -> Path:
    """Where the page templates are read from."""
    return templates_root() / "site"


def make_environment(folder: Path) -> jinja2.Environment:
    """The one Jinja2 environment for a template folder: site pages, web pages and email.

    Article text is passed in as data and escaped; it is never template source. Every
    template (partials included) escapes its variables except text parts (`*.txt.j2`),
    and an undefined name is an error. Jinja2 is imported here, not with the settings:
    commands that render nothing (`bounces -` as a mail pipe, `subscribers`) start
    without it.
    """
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=(), disabled_extensions=("txt.j2",), default=True
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
