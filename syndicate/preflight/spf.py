"""Preflight: evaluate an SPF record for one address (RFC 7208 `check_host()`).

Mechanisms `all`, `include`, `a`, `mx`, `ip4`, `ip6`, `exists` with their
qualifiers, the `redirect` modifier and macros; at most 10 DNS-querying terms
and 2 void look-ups, as RFC 7208 4.6.4 requires. `ptr` is counted but never
matches (the RFC says not to use it).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from syndicate.preflight.lookup import DnsClient, DnsLookupError, IpAddress

MAX_LOOKUPS = 10  # RFC 7208 4.6.4: DNS-querying terms per evaluation
MAX_VOID_LOOKUPS = 2  # RFC 7208 4.6.4: look-ups answering no records
MAX_MX = 10  # RFC 7208 4.6.4: MX names looked up per `mx` term
MAX_NAME = 253  # RFC 7208 7.3: characters of an expanded name; more are cut on its left
MAX_LABEL = 63  # RFC 1035 2.3.4: characters of one label

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISM = re.compile(
    r"(?P<q>[-+~?]?)(?P<name>all|include|a|mx|ptr|ip4|ip6|exists)"
    r"(?::(?P<arg>[^/]+))?(?P<cidr>(?:/\d+)?(?://\d+)?)$",
    re.IGNORECASE,
)
_MODIFIER = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9_.-]*)=(?P<value>.*)$")
_MACRO = re.compile(
    r"%\{(?P<letter>[slodiphcrtvSLODIPHCRTV])(?P<digits>\d*)(?P<r>r?)(?P<delims>[.\-+,/_=]*)\}"
)


class _PermError(Exception):
    """The record is broken: the result is permerror."""


class _TempError(Exception):
    """A DNS look-up failed: the result is temperror."""


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome for one address: `result` is an RFC 7208 result name."""

    result: str  # pass, fail, softfail, neutral, none, permerror, temperror
    reason: str  # the term that matched, or what is wrong
    lookups: int


@dataclass(frozen=True, slots=True)
class _Term:
    qualifier: str
    name: str
    arg: str | None
    cidr4: int | None
    cidr6: int | None
    text: str


def evaluate_spf(client: DnsClient, *, ip: IpAddress, domain: str, sender: str) -> SpfResult:
    """Evaluate the SPF record of `domain` for mail from `sender` sent by `ip`."""
    evaluation = _Evaluation(client, ip=ip, sender=sender)
    try:
        result, reason = evaluation.check_host(domain.rstrip(".").lower(), top=True)
    except _PermError as exc:
        return SpfResult("permerror", str(exc), evaluation.lookups)
    except _TempError as exc:
        return SpfResult("temperror", str(exc), evaluation.lookups)
    return SpfResult(result, reason, evaluation.lookups)


class _Evaluation:
    def __init__(self, client: DnsClient, *, ip: IpAddress, sender: str) -> None:
        self.client = client
        self.ip = ip
        self.sender = sender
        self.lookups = 0
        self.voids = 0
        self.included = ""  # the reason of the last include's result

    # DNS, counted -------------------------------------------------------------------------

    def _count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError(
                f"more than {MAX_LOOKUPS} DNS look-ups (at {term}); RFC 7208 4.6.4 makes the "
                "whole record fail"
            )

    def _void(self, found: list[object] | list[str] | list[IpAddress], name: str) -> None:
        if not found:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError(
                    f"more than {MAX_VOID_LOOKUPS} look-ups found nothing (last: {name})"
                )

    def _txt(self, name: str) -> list[str]:
        try:
            return self.client.txt(name)
        except DnsLookupError as exc:
            raise _TempError(exc.message) from exc

    def _addresses(self, name: str) -> list[IpAddress]:
        try:
            found = self.client.addresses(name, families=(self.ip.version,))
        except DnsLookupError as exc:
            raise _TempError(exc.message) from exc
        self._void(found, name)
        return found

    def _mx(self, name: str) -> list[str]:
        try:
            found = self.client.mx(name)
        except DnsLookupError as exc:
            raise _TempError(exc.message) from exc
        self._void(found, name)
        return found

    # check_host ---------------------------------------------------------------------------

    def check_host(self, domain: str, *, top: bool = False) -> tuple[str, str]:
        records = [r for r in self._txt(domain) if re.match(r"(?i)v=spf1( |$)", r)]
        if not records:
            if top:
                return "none", f"{domain} has no SPF record"
            raise _PermError(f"{domain} has no SPF record")
        if len(records) > 1:
            raise _PermError(f"{domain} has {len(records)} SPF records; RFC 7208 allows one")
        terms, redirect = self._parse(records[0], domain)
        for term in terms:
            if self._matches(term, domain):
                # A matching include passed because of a term inside it: name that one.
                inner = self.included if term.name == "include" else ""
                return _QUALIFIERS[term.qualifier], inner or f"{term.text} in {domain}"
        if redirect is not None:
            self._count(f"redirect={redirect}")
            target = self._expand(redirect, domain)
            result, reason = self.check_host(target)
            return result, reason
        return "neutral", f"no term of {domain}'s record matched"

    def _parse(self, record: str, domain: str) -> tuple[list[_Term], str | None]:
        terms: list[_Term] = []
        redirect: str | None = None
        for text in record.split()[1:]:
            mechanism = _MECHANISM.match(text)
            if mechanism:
                name = mechanism.group("name").lower()
                cidr4, cidr6 = _cidrs(mechanism.group("cidr"))
                if name == "ip6":  # its one prefix length is written with one slash
                    cidr4, cidr6 = None, cidr4
                if (cidr4 or 0) > 32 or (cidr6 or 0) > 128:
                    raise _PermError(f"{text!r} in {domain}'s record has a bad prefix length")
                arg = mechanism.group("arg")
                if name in ("ip4", "ip6", "include", "exists") and not arg:
                    raise _PermError(f"{text!r} in {domain}'s record needs a value")
                if name == "all" and arg:
                    raise _PermError(f"{text!r} in {domain}'s record is not valid")
                terms.append(_Term(mechanism.group("q") or "+", name, arg, cidr4, cidr6, text))
                continue
            modifier = _MODIFIER.match(text)
            if modifier is None:
                raise _PermError(f"{text!r} in {domain}'s record is not an SPF term")
            if modifier.group("name").lower() == "redirect":
                if redirect is not None:
                    raise _PermError(f"{domain}'s record has two redirect= modifiers")
                redirect = modifier.group("value")
        if any(t.name == "all" for t in terms):
            redirect = None  # RFC 7208 6.1: ignored when the record has "all"
        return terms, redirect

    def _matches(self, term: _Term, domain: str) -> bool:
        ip = self.ip
        if term.name == "all":
            return True
        if term.name in ("ip4", "ip6"):
            version = 4 if term.name == "ip4" else 6
            prefix = term.cidr4 if version == 4 else term.cidr6
            try:
                network = ipaddress.ip_network(
                    f"{term.arg}" if prefix is None else f"{term.arg}/{prefix}", strict=False
                )
            except ValueError:
                raise _PermError(f"{term.text!r} in {domain}'s record is not a network") from None
            if network.version != version:
                raise _PermError(f"{term.text!r} in {domain}'s record is not IPv{version}")
            return ip.version == version and ip in network
        self._count(term.text)
        target = self._expand(term.arg, domain) if term.arg else domain
        if term.name == "include":
            result, self.included = self.check_host(target)
            return result == "pass"
        if term.name == "a":
            return any(self._within(term, found) for found in self._addresses(target))
        if term.name == "mx":
            exchanges = self._mx(target)
            if len(exchanges) > MAX_MX:
                raise _PermError(f"{target} has more than {MAX_MX} MX records")
            return any(
                self._within(term, found)
                for exchange in exchanges
                for found in self._addresses(exchange)
            )
        if term.name == "exists":
            try:
                found = self.client.addresses(target, families=(4,))
            except DnsLookupError as exc:
                raise _TempError(exc.message) from exc
            self._void(found, target)
            return bool(found)
        return False  # ptr: deprecated by RFC 7208 5.5, never matched here

    def _within(self, term: _Term, found: IpAddress) -> bool:
        prefix = term.cidr4 if found.version == 4 else term.cidr6
        if prefix is None:
            return found == self.ip
        network = ipaddress.ip_network(f"{found}/{prefix}", strict=False)
        return self.ip in network

    def _expand(self, spec: str, domain: str) -> str:
        """Expand RFC 7208 section 7 macros in a domain-spec."""
        local, _, sender_domain = self.sender.rpartition("@")
        values = {
            "s": self.sender,
            "l": local or "postmaster",
            "o": sender_domain,
            "d": domain,
            "i": _dotted(self.ip),
            "p": "unknown",
            "v": "in-addr" if self.ip.version == 4 else "ip6",
            "h": sender_domain,
        }
        out: list[str] = []
        index = 0
        while index < len(spec):
            char = spec[index]
            if char != "%":
                out.append(char)
                index += 1
                continue
            following = spec[index + 1 : index + 2]
            if following == "%":
                out.append("%")
                index += 2
            elif following == "_":
                out.append(" ")
                index += 2
            elif following == "-":
                out.append("%20")
                index += 2
            else:
                macro = _MACRO.match(spec, index)
                if macro is None or macro.group("letter").lower() not in values:
                    raise _PermError(f"{spec!r} holds a broken macro")
                parts = re.split(
                    "[" + re.escape(macro.group("delims") or ".") + "]",
                    values[macro.group("letter").lower()],
                )
                if macro.group("r"):
                    parts.reverse()
                if macro.group("digits"):
                    keep = _number(macro.group("digits"))
                    if keep == 0:
                        raise _PermError(f"{spec!r} keeps 0 labels")
                    parts = parts[-keep:]
                out.append(".".join(parts))
                index = macro.end()
        return _domain_name("".join(out).rstrip("."), spec, domain)


def _domain_name(name: str, spec: str, domain: str) -> str:
    """`name`, the expansion of `spec` in `domain`'s record, as a name to look up.

    Over 253 characters, labels are cut on its left (RFC 7208 7.3); an empty label, one of
    over 63 characters or a last label of digits only (an address written where a name
    goes) is not a domain name: a syntax error of the record (4.6), a permerror.
    """
    labels = name.split(".")
    length, cut = len(name), 0
    while cut < len(labels) - 1 and length > MAX_NAME:
        length -= len(labels[cut]) + 1
        cut += 1
    labels = labels[cut:]
    if any(not 0 < len(label) <= MAX_LABEL for label in labels) or labels[-1].isdigit():
        raise _PermError(f"{spec!r} in {domain}'s record is not a domain name")
    return ".".join(labels)


def _dotted(ip: IpAddress) -> str:
    if ip.version == 4:
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


def _number(digits: str) -> int:
    """The number `digits` write, 10,000 for any larger one: Python reads no integer of over
    4,300 digits, and a record is whatever the nameserver answers."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 4 else 10_000


def _cidrs(text: str) -> tuple[int | None, int | None]:
    cidr4: int | None = None
    cidr6: int | None = None
    if not text:
        return None, None
    four, _, six = text.partition("//")
    if four:
        cidr4 = _number(four[1:])
    if six:
        cidr6 = _number(six)
    return cidr4, cidr6
