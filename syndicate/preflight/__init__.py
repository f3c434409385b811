"""Preflight: will the digest be accepted? SPF, DKIM, DMARC, the SMTP server, the message, volume.

`run_preflight` runs every check and returns one `Check` per name in CHECKS, in
that order. A check never raises: a failed look-up, a broken record or an
unreachable server is a failing `Check` whose detail says what to fix. DNS goes
through dnspython (the given nameserver, else the system's), each check bounded
by `timeout` seconds.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parseaddr

from syndicate import interrupts
from syndicate.config import Settings
from syndicate.errors import ConfigError, SyndicateError
from syndicate.preflight.lookup import (
    DnsClient,
    DnsLookupError,
    host_addresses,
    organisational_domain,
    parse_nameserver,
)
from syndicate.preflight.records import (
    RecordError,
    dkim_record_key,
    parse_dmarc,
    private_key_public_part,
)
from syndicate.preflight.server import probe_smtp
from syndicate.preflight.spf import MAX_LOOKUPS, evaluate_spf
from syndicate.send import SmtpServer, read_dkim_key
from syndicate.send.digests import build_sample_messages
from syndicate.store import Database
from syndicate.store.subscribers import stats

CHECKS = ("spf", "dkim", "dmarc", "smtp", "message", "volume")
# Gmail clips a message whose HTML passes about 102 KB; counted here as 102,000 bytes.
CLIP_BYTES = 102_000
# Gmail's and Yahoo's bulk-sender rules (2024) apply from 5,000 messages a day to their users.
BULK_PER_DAY = 5_000


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: the check's name, whether it passed, and what to do if not."""

    check: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {"check": self.check, "ok": self.ok, "detail": self.detail}


def _domain(address: str) -> str:
    return parseaddr(address)[1].rpartition("@")[2].lower().rstrip(".")


def from_domain(settings: Settings) -> str:
    """The domain of mail.from (the From: header's domain)."""
    return _domain(settings.mail.from_)


def envelope_address(settings: Settings) -> str:
    """The envelope sender: mail.bounce_address, else mail.from."""
    return parseaddr(settings.mail.bounce_address or settings.mail.from_)[1]


def check_spf(settings: Settings, client: DnsClient) -> Check:
    """The envelope domain's SPF record authorises every address of smtp.host."""
    sender = envelope_address(settings)
    domain = _domain(sender)
    which = "mail.bounce_address" if settings.mail.bounce_address else "mail.from"
    host = SmtpServer.from_settings(settings).host
    try:
        addresses = host_addresses(client, host)
    except DnsLookupError as exc:
        return Check("spf", False, f"cannot find the addresses of smtp.host {host!r}: {exc}.")
    if not addresses:
        return Check("spf", False, f"smtp.host {host!r} has no A or AAAA record. Check smtp.host.")
    passed: list[str] = []
    for ip in addresses:
        result = evaluate_spf(client, ip=ip, domain=domain, sender=sender)
        lookups = f"{result.lookups} of {MAX_LOOKUPS} DNS look-ups"
        if result.result == "pass":
            passed.append(f"{ip} ({result.reason})")
            continue
        if result.result == "none":
            fix = (
                f'Publish a TXT record at {domain} like "v=spf1 {_mechanism(ip)} -all" '
                "(or include: your mail provider's SPF)."
            )
            return Check("spf", False, f"{domain} ({which}) has no SPF record. {fix}")
        if result.result == "temperror":
            return Check("spf", False, f"cannot evaluate the SPF of {domain}: {result.reason}.")
        if result.result == "permerror":
            return Check(
                "spf",
                False,
                f"the SPF record of {domain} is broken: {result.reason}; {lookups}. "
                "Fix the record (flatten includes to stay within 10 look-ups).",
            )
        return Check(
            "spf",
            False,
            f"{domain} ({which}) does not authorise {ip} (smtp.host {host}): "
            f"{result.result} by {result.reason}. Add {_mechanism(ip)} (or include: your "
            f"provider's SPF) before the all term of {domain}'s record.",
        )
    return Check(
        "spf",
        True,
        f"{domain} ({which}) authorises smtp.host {host}: {', '.join(passed)}.",
    )


def _mechanism(ip: object) -> str:
    return f"ip{'6' if ':' in str(ip) else '4'}:{ip}"


def check_dkim(settings: Settings, client: DnsClient) -> Check:
    """dkim.key_file's public key is the one published, and the DKIM domain aligns with From."""
    dkim = settings.dkim
    if not dkim.domain:
        return Check(
            "dkim",
            False,
            "signing is off (dkim.domain is empty). Make a key, publish it and set "
            "dkim.domain, dkim.selector and dkim.key_file; see docs/operating.md, DKIM.",
        )
    try:
        key = read_dkim_key(settings)
        ours = private_key_public_part(key.private_key if key is not None else b"")
    except ConfigError as exc:
        return Check("dkim", False, str(exc))
    except RecordError as exc:
        return Check("dkim", False, f"dkim.key_file {str(dkim.key_file)!r}: {exc}.")
    name = f"{dkim.selector}._domainkey.{dkim.domain}"
    publish = f'Publish TXT "v=DKIM1; k=rsa; p={ours.to_p()}" at {name}.'
    try:
        records = [r for r in client.txt(name) if "p=" in r]
    except DnsLookupError as exc:
        return Check("dkim", False, f"{exc}.")
    if not records:
        return Check("dkim", False, f"no DKIM key record at {name}. {publish}")
    if len(records) > 1:
        return Check("dkim", False, f"{name} has {len(records)} key records; keep one. {publish}")
    try:
        theirs = dkim_record_key(records[0])
    except RecordError as exc:
        return Check("dkim", False, f"the record at {name} is not usable: {exc}. {publish}")
    if theirs != ours:
        return Check(
            "dkim",
            False,
            f"the key published at {name} is not the public half of dkim.key_file. {publish}",
        )
    sender = from_domain(settings)
    if organisational_domain(sender) != organisational_domain(dkim.domain):
        return Check(
            "dkim",
            False,
            f"the key at {name} matches, but d={dkim.domain} does not align with the From "
            f"domain {sender} (DMARC relaxed alignment). Sign with dkim.domain = {sender!r}.",
        )
    weak = " (1024-bit: prefer 2048)" if ours.bits < 2048 else ""
    return Check(
        "dkim",
        True,
        f"{name} publishes the {ours.bits}-bit key of dkim.key_file{weak}; "
        f"d={dkim.domain} aligns with From {sender}.",
    )


def check_dmarc(settings: Settings, client: DnsClient) -> Check:
    """A DMARC record at _dmarc.<From domain>, else at its organisational domain, parses."""
    sender = from_domain(settings)
    names = [f"_dmarc.{sender}"]
    org = organisational_domain(sender)
    if org != sender:
        names.append(f"_dmarc.{org}")
    for name in names:
        try:
            records = [r for r in client.txt(name) if r[:8].upper().startswith("V=DMARC1")]
        except DnsLookupError as exc:
            return Check("dmarc", False, f"{exc}.")
        if not records:
            continue
        if len(records) > 1:
            return Check("dmarc", False, f"{name} has {len(records)} DMARC records; keep one.")
        try:
            found = parse_dmarc(records[0])
        except RecordError as exc:
            return Check("dmarc", False, f"the record at {name} is not valid: {exc}.")
        note = " (monitoring only: nothing is quarantined or rejected)"
        pct = f", pct={found.percent}" if found.percent != 100 else ""
        reports = f", reports to {found.reports}" if found.reports else ", no rua= reports"
        return Check(
            "dmarc",
            True,
            f"{name}: policy p={found.policy}, sp={found.subdomain_policy}{pct}{reports}"
            f"{note if found.policy == 'none' else ''}.",
        )
    return Check(
        "dmarc",
        False,
        f'no DMARC record at {" or ".join(names)}. Publish TXT "v=DMARC1; p=none; '
        f'rua=mailto:dmarc@{org}" at _dmarc.{org}, then tighten p= once reports are clean.',
    )


def check_smtp(settings: Settings, *, timeout: float) -> Check:
    """The configured SMTP server answers, encrypts with a trusted certificate, takes the login."""
    if settings.mail.transport != "smtp":
        return Check(
            "smtp",
            False,
            f"mail.transport is {settings.mail.transport!r}: nothing goes out over SMTP. "
            'Set mail.transport = "smtp" and [smtp] to send.',
        )
    with interrupts.python_sigint():  # Ctrl-C cancels the probe, as asyncio.run means it to
        ok, detail = asyncio.run(probe_smtp(SmtpServer.from_settings(settings), timeout=timeout))
    return Check("smtp", ok, detail)


def _part(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return ""
    content = part.get_content()
    return content if isinstance(content, str) else ""


def check_message(settings: Settings, messages: Mapping[str, bytes], *, error: str = "") -> Check:
    """Each built digest message has one-click https List-Unsubscribe, fits Gmail, has the address.

    `messages` maps a language to one recipient's message bytes; empty means
    there is no digest to build now; `error` is why building it failed.
    """
    if error:
        return Check("message", False, f"the digest cannot be built: {error}")
    if not messages:
        return Check(
            "message",
            False,
            "no digest to build now (no articles in the store or the seeds). "
            "Add dumps to paths.seeds and rerun.",
        )
    problems: list[str] = []
    sizes: list[str] = []
    postal = settings.mail.postal_address.strip()
    for lang, raw in messages.items():
        message = message_from_bytes(raw, _class=EmailMessage, policy=policy.default)
        unsubscribe = str(message.get("List-Unsubscribe", ""))
        if "<https://" not in unsubscribe:
            problems.append(
                f"{lang}: List-Unsubscribe has no https link (site.base_url must be https)"
            )
        if str(message.get("List-Unsubscribe-Post", "")) != "List-Unsubscribe=One-Click":
            problems.append(f"{lang}: no List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        html_part = _part(message, "html")
        size = len(html_part.encode("utf-8"))
        sizes.append(f"{lang} {size / 1000:.1f} KB")
        if size > CLIP_BYTES:
            problems.append(
                f"{lang}: the HTML is {size:,} bytes; Gmail clips above about 102 KB "
                "(lower digest.max_articles or digest.lead_words)"
            )
        if not postal:
            problems.append(f"{lang}: no postal address (set mail.postal_address)")
        elif postal not in _part(message, "plain") or postal not in html.unescape(html_part):
            problems.append(f"{lang}: the postal address is missing from a part")
    if problems:
        return Check("message", False, "; ".join(problems) + ".")
    return Check(
        "message",
        True,
        "one-click https List-Unsubscribe, postal address, HTML under 102 KB ("
        + ", ".join(sizes)
        + ").",
    )


def check_volume(confirmed: int) -> Check:
    """Informational: whether the bulk-sender rules apply to this list's size."""
    people = f"{confirmed:,} confirmed subscriber{'' if confirmed == 1 else 's'}"
    if confirmed >= BULK_PER_DAY:
        return Check(
            "volume",
            True,
            f"{people}: at or above {BULK_PER_DAY:,} a day, so Gmail's and Yahoo's bulk-sender "
            "rules apply (SPF and DKIM aligned, DMARC, one-click unsubscribe, "
            "spam rate under 0.3%).",
        )
    return Check(
        "volume",
        True,
        f"{people}: under the {BULK_PER_DAY:,} a day at which bulk-sender rules apply.",
    )


def check_preflight_setup(settings: Settings, nameserver: str | None) -> tuple[str, int] | None:
    """Return the DNS server to ask (None: the system's resolver).

    Raises ConfigError when mail.from holds no address or `nameserver` is not
    HOST[:PORT]: what makes every check moot, found before anything is read or stored.
    """
    if "@" not in parseaddr(settings.mail.from_)[1]:
        raise ConfigError(
            f"config key mail.from has value {settings.mail.from_!r}; preflight checks the "
            "sender's domain.",
            key="mail.from",
            hint='Set it, like from = "News <news@example.org>".',
        )
    if nameserver is None:
        return None
    try:
        return parse_nameserver(nameserver)
    except ValueError as exc:
        raise ConfigError(
            f"--nameserver {nameserver!r}: {exc}.",
            hint="Give an IP address and an optional port, like 127.0.0.1:5353.",
        ) from None


def run_preflight(
    settings: Settings,
    *,
    messages: Mapping[str, bytes],
    message_error: str = "",
    confirmed: int,
    nameserver: str | None,
    timeout: float,
) -> list[Check]:
    """Run every check; one Check per name of CHECKS, in that order.

    Raises ConfigError (before any check) when mail.from holds no address or
    `nameserver` is not HOST[:PORT].
    """
    client = DnsClient(nameserver=check_preflight_setup(settings, nameserver), timeout=timeout)
    results: list[Check] = []
    for name, run in (("spf", check_spf), ("dkim", check_dkim), ("dmarc", check_dmarc)):
        client.start()
        try:
            results.append(run(settings, client))
        except DnsLookupError as exc:  # a look-up outside a check's own handling
            results.append(Check(name, False, f"{exc}."))
    results.append(check_smtp(settings, timeout=timeout))
    results.append(check_message(settings, messages, error=message_error))
    results.append(check_volume(confirmed))
    return results


def preflight_setup(
    settings: Settings,
    *,
    open_db: Callable[[], Database],
    now: datetime,
    nameserver: str | None,
    timeout: float,
) -> list[Check]:
    """Run every check on this setup and today's digest, built as `send` would build it.

    The digest is read without the write lock (no digest is stored); a digest that
    cannot be built fails the message check rather than the command. `open_db` is
    called once mail.from and `nameserver` are known to be usable (ConfigError
    otherwise), so a refused run makes no store.
    """
    check_preflight_setup(settings, nameserver)
    db = open_db()
    message_error = ""
    try:
        messages = build_sample_messages(settings, db, now=now)
    except SyndicateError as exc:
        messages, message_error = {}, str(exc)
    return run_preflight(
        settings,
        messages=messages,
        message_error=message_error,
        confirmed=stats(db)["confirmed"],
        nameserver=nameserver,
        timeout=timeout,
    )


__all__ = ["CHECKS", "Check", "preflight_setup", "run_preflight"]
