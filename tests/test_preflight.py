"""`syndicate preflight` against a real DNS server (dnslib) and a real SMTP server (aiosmtpd
with STARTTLS from a throwaway CA and a login): each broken record fails exactly its check."""

from __future__ import annotations

import ipaddress
import json
import shutil
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from syndicate.cli import cli
from syndicate.preflight import BULK_PER_DAY, CHECKS, check_volume
from syndicate.preflight.lookup import DnsClient, organisational_domain, parse_nameserver
from syndicate.preflight.records import dkim_record_key, private_key_public_part
from syndicate.preflight.spf import evaluate_spf
from tests.plugins.dns import DnsServer, Zone
from tests.plugins.smtp import run_smtp_server

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
PASSWORD = "correct horse"


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _p(key: rsa.RSAPrivateKey) -> str:
    import base64

    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """The DKIM key of the config, and another one."""
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _good_zone(zone: Zone, key: rsa.RSAPrivateKey) -> None:
    zone.txt("example.org", "v=spf1 include:_spf.example.org -all")
    zone.txt("example.org", "google-site-verification=abc")  # not SPF: ignored
    zone.txt("_spf.example.org", "v=spf1 mx a:mail.example.org ~all")
    zone.mx("example.org", "mx.example.org")
    zone.a("mx.example.org", "192.0.2.25")
    zone.a("mail.example.org", "127.0.0.1")
    zone.txt("s2024._domainkey.example.org", f"v=DKIM1; k=rsa; p={_p(key)}")
    zone.txt("_dmarc.example.org", "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.org")


@dataclass
class Setup:
    project: Path
    zone: Zone
    dns: DnsServer
    smtp_port: int
    monkeypatch: pytest.MonkeyPatch

    def run(self, *args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(
            cli, ["preflight", "--nameserver", self.dns.address, *args], catch_exceptions=False
        )
        return result.exit_code, result.stdout, result.stderr

    def config(self, old: str, new: str) -> None:
        path = self.project / "syndicate.toml"
        text = path.read_text(encoding="utf-8")
        assert old in text
        path.write_text(text.replace(old, new), encoding="utf-8")

    def failing(self) -> list[str]:
        code, out, err = self.run("--json")
        checks = json.loads(out)
        assert [c["check"] for c in checks] == list(CHECKS)
        failed = [c["check"] for c in checks if not c["ok"]]
        assert code == (1 if failed else 0), (code, err)
        return failed


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and data == (b"news", PASSWORD.encode())
    # handled=False: aiosmtpd answers a refusal with 535 itself (handled=True, the default,
    # means the authenticator already replied, so the client would wait for its timeout).
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def setup(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    ca: trustme.CA,
    store: str,  # the checks that run the command read the store: on both engines
) -> Iterator[Setup]:
    for seed in SEEDS.glob("*.txt"):
        shutil.copy(seed, workdir / "seeds" / seed.name)
    monkeypatch.chdir(workdir)
    for name in ("SYNDICATE_CONFIG", "SYNDICATE_SECRET"):
        monkeypatch.delenv(name, raising=False)
    (workdir / "dkim.pem").write_bytes(_pem(keys[0]))
    (workdir / "dkim.pem").chmod(0o600)  # a key others can read is refused
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(workdir / "ca.pem"))
    monkeypatch.setenv("SYNDICATE_SMTP_PASSWORD", PASSWORD)
    _good_zone(dns_server.zone, keys[0])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with run_smtp_server(
        tls_context=context, require_starttls=True, authenticator=_authenticate
    ) as smtp:
        (workdir / "syndicate.toml").write_text(
            '[site]\nbase_url = "https://news.example.org/"\n'
            '[mail]\ntransport = "smtp"\nfrom = "Tin mới <news@example.org>"\n'
            'postal_address = "12 Trần Hưng Đạo, TP. Bến Lam"\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\ntls = "starttls"\n'
            'username = "news"\n'
            '[dkim]\ndomain = "example.org"\nselector = "s2024"\nkey_file = "dkim.pem"\n',
            encoding="utf-8",
        )
        yield Setup(workdir, dns_server.zone, dns_server, smtp.port, monkeypatch)


def test_a_good_setup_passes_every_check_with_one_line_each(setup: Setup) -> None:
    code, out, err = setup.run()
    assert (code, err) == (0, ""), out
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"✓ {name}" for name in CHECKS]
    assert lines[0] == (
        "✓ spf: example.org (mail.from) authorises smtp.host 127.0.0.1: "
        "127.0.0.1 (a:mail.example.org in _spf.example.org)."
    )
    assert lines[1].startswith(
        "✓ dkim: s2024._domainkey.example.org publishes the 2048-bit key of dkim.key_file; "
    )
    assert lines[2] == (
        "✓ dmarc: _dmarc.example.org: policy p=quarantine, sp=quarantine, "
        "reports to mailto:dmarc@example.org."
    )
    assert lines[3] == (
        f"✓ smtp: 127.0.0.1:{setup.smtp_port} answered, STARTTLS with a trusted certificate, "
        "accepted the login of 'news'."
    )
    assert lines[4].startswith("✓ message: one-click https List-Unsubscribe, postal address, ")
    assert lines[5] == (
        "✓ volume: 0 confirmed subscribers: under the 5,000 a day at which bulk-sender rules apply."
    )


def _no_spf(s: Setup) -> None:
    s.zone.remove("example.org")
    s.zone.mx("example.org", "mx.example.org")


def _spf_elsewhere(s: Setup) -> None:
    s.zone.remove("_spf.example.org")
    s.zone.txt("_spf.example.org", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all")


def _spf_eleven_lookups(s: Setup) -> None:
    s.zone.remove("example.org")
    s.zone.txt("example.org", "v=spf1 include:l1.example.org -all")
    for n in range(1, 12):
        s.zone.txt(f"l{n}.example.org", f"v=spf1 include:l{n + 1}.example.org ~all")
    s.zone.txt("l12.example.org", "v=spf1 ip4:127.0.0.1 -all")


def _other_dkim_key(s: Setup, other: rsa.RSAPrivateKey) -> None:
    s.zone.remove("s2024._domainkey.example.org")
    s.zone.txt("s2024._domainkey.example.org", f"v=DKIM1; k=rsa; p={_p(other)}")


def _no_dmarc(s: Setup) -> None:
    s.zone.remove("_dmarc.example.org")


def _bad_dmarc(s: Setup) -> None:
    s.zone.remove("_dmarc.example.org")
    s.zone.txt("_dmarc.example.org", "v=DMARC1; p=maybe")


def _wrong_password(s: Setup) -> None:
    s.monkeypatch.setenv("SYNDICATE_SMTP_PASSWORD", "wrong")


def _untrusted_certificate(s: Setup) -> None:
    s.monkeypatch.setenv("SSL_CERT_FILE", str(s.project / "nobody-trusts-this.pem"))


def _no_postal_address(s: Setup) -> None:
    s.config('postal_address = "12 Trần Hưng Đạo, TP. Bến Lam"\n', "")


def _http_base_url(s: Setup) -> None:
    s.config('base_url = "https://news', 'base_url = "http://news')


BREAKS: dict[str, tuple[str, Callable[..., None]]] = {
    "no SPF record": ("spf", _no_spf),
    "SPF does not list the server": ("spf", _spf_elsewhere),
    "SPF needs 11 look-ups": ("spf", _spf_eleven_lookups),
    "DKIM record holds another key": ("dkim", _other_dkim_key),
    "no DMARC record": ("dmarc", _no_dmarc),
    "DMARC record without a policy": ("dmarc", _bad_dmarc),
    "wrong SMTP password": ("smtp", _wrong_password),
    "untrusted certificate": ("smtp", _untrusted_certificate),
    "no postal address": ("message", _no_postal_address),
    "unsubscribe link over http": ("message", _http_base_url),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_each_broken_part_fails_exactly_its_check(
    setup: Setup, case: str, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    assert setup.failing() == []
    check, breaks = BREAKS[case]
    if breaks is _other_dkim_key:
        breaks(setup, keys[1])
    else:
        breaks(setup)
    assert setup.failing() == [check]


def test_failing_lines_say_what_to_fix(
    setup: Setup, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    _spf_elsewhere(setup)
    _no_dmarc(setup)
    _other_dkim_key(setup, keys[1])
    code, out, err = setup.run()
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0] == (
        "✗ spf: example.org (mail.from) does not authorise 127.0.0.1 (smtp.host 127.0.0.1): "
        "fail by -all in example.org. Add ip4:127.0.0.1 (or include: your provider's SPF) "
        "before the all term of example.org's record."
    )
    assert lines[1] == (
        "✗ dkim: the key published at s2024._domainkey.example.org is not the public half of "
        f'dkim.key_file. Publish TXT "v=DKIM1; k=rsa; p={_p(keys[0])}" at '
        "s2024._domainkey.example.org."
    )
    assert lines[2] == (
        '✗ dmarc: no DMARC record at _dmarc.example.org. Publish TXT "v=DMARC1; p=none; '
        'rua=mailto:dmarc@example.org" at _dmarc.example.org, then tighten p= once reports '
        "are clean."
    )


def test_a_nameserver_s_escape_sequences_are_printed_as_text(setup: Setup) -> None:
    # What a record holds is the nameserver's to say: an escape sequence in an include's
    # target (OSC 0 retitles the terminal) reached the terminal raw in the spf line.
    setup.zone.remove("example.org")
    setup.zone.txt("example.org", "v=spf1 include:\x1b]0;owned\x07.example.org -all")
    code, out, err = setup.run()
    assert (code, err) == (1, "")
    assert out.splitlines()[0] == (
        "✗ spf: the SPF record of example.org is broken: \\x1b]0;owned\\x07.example.org has "
        "no SPF record; 1 of 10 DNS look-ups. Fix the record (flatten includes to stay within "
        "10 look-ups)."
    )


def _garbled(p: str) -> str:
    """The key `p` with the NULL after its algorithm's OID 31 bytes long: DER dkimpy's
    parser asserts on (AssertionError, not the ValueError it raises for other garbage)."""
    import base64

    der = bytearray(base64.b64decode(p))
    der[der.index(b"\x05\x00\x03") + 1] = 0x1F
    return base64.b64encode(bytes(der)).decode("ascii")


_PCT = "is not valid: pct={} is not a number from 0 to 100."


@pytest.mark.parametrize(
    ("name", "record", "line"),
    [
        ("s2024._domainkey", "garbled", "is not usable: its p= is not a base64 RSA public key"),
        ("_dmarc", "v=DMARC1; p=none; pct=" + "1" * 5000, _PCT.format("1" * 5000)),
        ("_dmarc", "v=DMARC1; p=none; pct=\u00b2", _PCT.format("\u00b2")),
    ],
    ids=["DKIM key DER dkimpy asserts on", "pct of 5000 digits", "pct of a superscript two"],
)
def test_a_garbage_key_or_dmarc_record_fails_its_check_in_one_line(
    setup: Setup,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    name: str,
    record: str,
    line: str,
) -> None:
    # A record is whatever the nameserver answers: these raised AssertionError (dkimpy) or
    # ValueError (int) through the command, a traceback in place of every check's line.
    check = "dkim" if record == "garbled" else "dmarc"
    if record == "garbled":
        record = f"v=DKIM1; k=rsa; p={_garbled(_p(keys[0]))}"
        line += f' (bad DER). Publish TXT "v=DKIM1; k=rsa; p={_p(keys[0])}" at {name}.example.org.'
    setup.zone.remove(f"{name}.example.org")
    setup.zone.txt(f"{name}.example.org", record)
    assert setup.failing() == [check]
    code, out, err = setup.run()
    assert (code, err) == (1, "")
    [failed] = [row for row in out.splitlines() if row.startswith("✗")]
    assert failed == f"✗ {check}: the record at {name}.example.org {line}"


def test_the_envelope_domain_is_the_bounce_address_when_set(setup: Setup) -> None:
    setup.config("[smtp]", '\nbounce_address = "bounces@bounce.example.net"\n[smtp]')
    setup.zone.txt("bounce.example.net", "v=spf1 ip4:127.0.0.0/8 -all")
    code, out, _err = setup.run()
    assert code == 0
    assert out.splitlines()[0] == (
        "✓ spf: bounce.example.net (mail.bounce_address) authorises smtp.host 127.0.0.1: "
        "127.0.0.1 (ip4:127.0.0.0/8 in bounce.example.net)."
    )


def test_a_wrong_password_is_the_servers_refusal_not_a_timeout(setup: Setup) -> None:
    _wrong_password(setup)
    code, out, _err = setup.run("--json")
    assert code == 1
    [smtp] = [c for c in json.loads(out) if c["check"] == "smtp"]
    assert smtp["detail"] == (
        f"127.0.0.1:{setup.smtp_port} refused the login of 'news': 535 5.7.8 Authentication "
        "credentials invalid. Check smtp.username and SYNDICATE_SMTP_PASSWORD."
    )


def test_dkim_off_and_the_outbox_transport_fail_with_the_reason(setup: Setup) -> None:
    setup.config('[dkim]\ndomain = "example.org"', '[dkim]\ndomain = ""')
    setup.config('transport = "smtp"', 'transport = "outbox"')
    code, out, _err = setup.run("--json")
    checks = {c["check"]: c for c in json.loads(out)}
    assert code == 1
    assert checks["dkim"] == {
        "check": "dkim",
        "ok": False,
        "detail": "signing is off (dkim.domain is empty). Make a key, publish it and set "
        "dkim.domain, dkim.selector and dkim.key_file; see docs/operating.md, DKIM.",
    }
    assert checks["smtp"]["ok"] is False
    assert checks["smtp"]["detail"].startswith("mail.transport is 'outbox': ")


def test_a_nameserver_that_never_answers_fails_the_dns_checks_without_a_traceback(
    setup: Setup, silent_nameserver: str
) -> None:
    result = CliRunner().invoke(
        cli,
        # Every look-up waits out the timeout: keep it short (only the DNS checks are judged).
        ["preflight", "--nameserver", silent_nameserver, "--timeout", "0.2", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    checks = {c["check"]: c for c in json.loads(result.stdout)}
    for name in ("spf", "dkim", "dmarc"):
        assert checks[name]["ok"] is False
        assert "timed out" in checks[name]["detail"], checks[name]
    assert checks["smtp"]["ok"] is True  # smtp.host is an address: no DNS needed


def test_a_server_failure_is_a_failing_line(setup: Setup) -> None:
    setup.zone.fail("_dmarc.example.org")
    code, out, _err = setup.run()
    assert code == 1
    assert out.splitlines()[2] == (
        "✗ dmarc: DNS look-up of TXT _dmarc.example.org failed (SERVFAIL)."
    )


@pytest.mark.parametrize("value", ["dns.example.org", "127.0.0.1:99999", "[::1]x"])
def test_a_bad_nameserver_is_a_usage_error(setup: Setup, value: str) -> None:
    result = CliRunner().invoke(cli, ["preflight", "--nameserver", value])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: --nameserver {value!r}: ")
    assert result.stdout == ""


# The parts, on their own ------------------------------------------------------------------


def _spf(server: DnsServer, ip: str, domain: str = "example.org") -> tuple[str, str, int]:
    client = DnsClient(nameserver=(server.host, server.port), timeout=5)
    result = evaluate_spf(
        client, ip=ipaddress.ip_address(ip), domain=domain, sender=f"news@{domain}"
    )
    return result.result, result.reason, result.lookups


def test_spf_redirect_mx_cidr_and_qualifiers(dns_server: DnsServer) -> None:
    zone = dns_server.zone
    zone.txt("example.org", "v=spf1 ?ip4:198.51.100.7 redirect=_spf.example.net")
    zone.txt("_spf.example.net", "v=spf1 mx:example.net/24 a//64 ip6:2001:db8:1::/48 ~all")
    zone.mx("example.net", "mx1.example.net")
    zone.a("mx1.example.net", "203.0.113.10")
    zone.a("_spf.example.net", "2001:db8:5::1")
    assert _spf(dns_server, "203.0.113.99") == ("pass", "mx:example.net/24 in _spf.example.net", 2)
    assert _spf(dns_server, "2001:db8:5::ffff")[:2] == ("pass", "a//64 in _spf.example.net")
    assert _spf(dns_server, "2001:db8:1:2::3")[0] == "pass"
    assert _spf(dns_server, "198.51.100.7")[:2] == ("neutral", "?ip4:198.51.100.7 in example.org")
    assert _spf(dns_server, "192.0.2.1")[:2] == ("softfail", "~all in _spf.example.net")


def test_spf_macros_exists_and_the_void_lookup_limit(dns_server: DnsServer) -> None:
    zone = dns_server.zone
    zone.txt("example.org", "v=spf1 exists:%{ir}.%{v}._spf.%{d} -all")
    zone.a("1.2.0.192.in-addr._spf.example.org", "127.0.0.2")
    assert _spf(dns_server, "192.0.2.1")[0] == "pass"
    assert _spf(dns_server, "192.0.2.2")[0] == "fail"
    zone.txt("voids.example", "v=spf1 a:n1.voids.example a:n2.voids.example a:n3.voids.example")
    result, reason, _ = _spf(dns_server, "192.0.2.2", "voids.example")
    assert (result, reason) == (
        "permerror",
        "more than 2 look-ups found nothing (last: n3.voids.example)",
    )


def test_spf_two_records_and_syntax_errors_are_permerrors(dns_server: DnsServer) -> None:
    dns_server.zone.txt("two.example", "v=spf1 -all")
    dns_server.zone.txt("two.example", "v=spf1 +all")
    dns_server.zone.txt("bad.example", "v=spf1 ip4:not-an-address -all")
    assert _spf(dns_server, "192.0.2.1", "two.example")[:2] == (
        "permerror",
        "two.example has 2 SPF records; RFC 7208 allows one",
    )
    assert _spf(dns_server, "192.0.2.1", "bad.example")[0] == "permerror"
    assert _spf(dns_server, "192.0.2.1", "nothing.example")[0] == "none"


def test_spf_numbers_too_long_to_read_are_a_permerror_or_every_label(
    dns_server: DnsServer,
) -> None:
    # Python reads no integer of over 4,300 digits: a prefix length or a macro's label count
    # that long in a record (a hostile or broken nameserver's) raised ValueError through
    # preflight, a traceback.
    zone = dns_server.zone
    zone.txt("cidr.example", "v=spf1 ip4:192.0.2.1/" + "1" * 5000 + " -all")
    zone.txt("cidr6.example", "v=spf1 a//" + "1" * 5000 + " -all")
    zone.txt("macro.example", "v=spf1 exists:%{d" + "9" * 5000 + "}.x -all")
    zone.txt("zero.example", "v=spf1 exists:%{d" + "0" * 5000 + "}.x -all")
    for domain in ("cidr.example", "cidr6.example"):
        result, reason, _ = _spf(dns_server, "192.0.2.1", domain)
        assert result == "permerror"
        assert reason.endswith(f" in {domain}'s record has a bad prefix length")
    assert _spf(dns_server, "192.0.2.1", "macro.example") == ("fail", "-all in macro.example", 1)
    assert _spf(dns_server, "192.0.2.1", "zero.example")[0] == "permerror"
    assert ("macro.example.x", "A") in dns_server.zone.queries  # every label kept


def test_spf_a_target_that_is_no_domain_name_is_a_permerror_and_a_long_one_is_cut(
    dns_server: DnsServer,
) -> None:
    # RFC 7208 4.6 and 7.3: a domain-spec with an empty or over-long label is a syntax error
    # of the record (permerror, which the publisher must fix); an expansion over 253
    # characters loses labels on its left. Both were a failed look-up (temperror: "try
    # again later"), and the long one was never asked.
    zone = dns_server.zone
    zone.txt("empty.example", "v=spf1 a:mail..empty.example -all")
    zone.txt("label.example", "v=spf1 include:" + "x" * 64 + ".label.example -all")
    zone.txt("digits.example", "v=spf1 a:192.0.2.1 -all")  # an address where a name goes
    zone.txt("macro.example", "v=spf1 exists:%{l}.macro.example -all")
    for domain in ("empty.example", "label.example", "digits.example"):
        result, reason, _ = _spf(dns_server, "192.0.2.1", domain)
        assert result == "permerror", reason
        assert reason.endswith(f" in {domain}'s record is not a domain name"), reason
    client = DnsClient(nameserver=(dns_server.host, dns_server.port), timeout=5)
    sender = ".".join(["abcdefghij"] * 30) + "@macro.example"  # a local part of 329 characters
    kept = ".".join(["abcdefghij"] * 21) + ".macro.example"  # 244 characters: 9 labels cut
    zone.a(kept, "127.0.0.2")
    result = evaluate_spf(
        client, ip=ipaddress.ip_address("192.0.2.1"), domain="macro.example", sender=sender
    )
    assert result.result == "pass", result.reason
    assert zone.queries[-1] == (kept, "A")


def test_dkim_public_key_der_is_what_openssl_publishes(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    ours = private_key_public_part(_pem(keys[0]))
    assert ours.to_p() == _p(keys[0])
    assert dkim_record_key(f"v=DKIM1; k=rsa; p={_p(keys[0])}") == ours
    pkcs8 = keys[0].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert private_key_public_part(pkcs8) == ours


def test_organisational_domain_by_the_suffix_rule() -> None:
    assert organisational_domain("news.example.org") == "example.org"
    assert organisational_domain("tin.baoquangtri.com.vn") == "baoquangtri.com.vn"
    assert organisational_domain("baoquangtri.vn") == "baoquangtri.vn"


def test_nameserver_forms() -> None:
    assert parse_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)


def test_volume_says_when_bulk_sender_rules_apply() -> None:
    assert check_volume(1).detail == (
        "1 confirmed subscriber: under the 5,000 a day at which bulk-sender rules apply."
    )
    big = check_volume(BULK_PER_DAY)
    assert big.ok is True
    assert big.detail.startswith("5,000 confirmed subscribers: at or above 5,000 a day, so ")


def test_preflight_probes_the_server_send_opens(workdir: Path) -> None:
    # smtp.* is read in one place, send's SmtpServer: preflight's probe and send's pool
    # are built from the same value, so they cannot disagree about the server.
    import inspect

    from syndicate.config import load_settings
    from syndicate.preflight.server import probe_smtp
    from syndicate.send import SmtpMailer, SmtpServer, open_mailer

    (workdir / "syndicate.toml").write_text(
        '[mail]\ntransport = "smtp"\nfrom = "news@example.org"\n'
        '[smtp]\nhost = "mx.example.org"\nport = 465\ntls = "tls"\nusername = "news"\n'
        "timeout = 12\nmessages_per_connection = 7\n",
        encoding="utf-8",
    )
    settings = load_settings(
        workdir / "syndicate.toml", {"SYNDICATE_SMTP_PASSWORD": PASSWORD}, cwd=workdir
    )
    server = SmtpServer.from_settings(settings)
    assert server == SmtpServer("mx.example.org", 465, "tls", "news", PASSWORD, 12.0, 7)
    assert PASSWORD not in repr(server)
    mailer = open_mailer(settings, folder="test")
    assert isinstance(mailer, SmtpMailer)
    assert (mailer.host, mailer.port, mailer.tls, mailer.username, mailer.password) == (
        server.host,
        server.port,
        server.tls,
        server.username,
        server.password,
    )
    assert (mailer.timeout, mailer.messages_per_connection) == (12.0, 7)
    assert inspect.signature(probe_smtp).parameters["smtp"].annotation == "SmtpServer"


def test_records_behind_cnames_are_followed(
    setup: Setup, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    # A mail provider has the operator publish CNAMEs to records it keeps (a DKIM selector
    # at the provider, rotating keys; an SPF include; the SMTP host's name): each check
    # reads through them as a receiving mail server does.
    setup.zone.remove("s2024._domainkey.example.org")
    setup.zone.cname("s2024._domainkey.example.org", "s2024.dkim.provider.example.net")
    setup.zone.cname("s2024.dkim.provider.example.net", "k1.dkim.provider.example.net")
    setup.zone.txt("k1.dkim.provider.example.net", f"v=DKIM1; k=rsa; p={_p(keys[0])}")
    setup.zone.remove("_spf.example.org")
    setup.zone.cname("_spf.example.org", "spf.provider.example.net")
    setup.zone.txt("spf.provider.example.net", "v=spf1 a:relay.example.org -all")
    setup.zone.cname("relay.example.org", "mail.example.org")
    setup.zone.remove("_dmarc.example.org")
    setup.zone.cname("_dmarc.example.org", "dmarc.provider.example.net")
    setup.zone.txt("dmarc.provider.example.net", "v=DMARC1; p=reject")
    assert setup.failing() == []
    # and a CNAME to the wrong key is the wrong key
    setup.zone.remove("k1.dkim.provider.example.net")
    setup.zone.txt("k1.dkim.provider.example.net", f"v=DKIM1; k=rsa; p={_p(keys[1])}")
    assert setup.failing() == ["dkim"]
