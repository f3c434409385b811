"""Preflight: DNS look-ups through dnspython, each bounded by the check's deadline.

A name that does not exist or has no record of the type asked is an empty
answer (a "void" look-up in RFC 7208's words); a timeout, SERVFAIL or a missing
resolver is a `DnsLookupError`, which a check turns into its failing line.
"""

from __future__ import annotations

import ipaddress
import time

import dns.exception
import dns.resolver

from syndicate.errors import SyndicateError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Second-level labels that act as public suffixes under a two-letter country code
# (example.com.vn, example.co.uk): the "simple suffix rule" for organisational domains.
_SECOND_LEVEL = {"ac", "biz", "co", "com", "edu", "gov", "health", "info", "int", "name"}
_SECOND_LEVEL |= {"net", "org", "pro"}


class DnsLookupError(SyndicateError):
    """A DNS look-up failed (timeout, server failure): the check that asked fails."""


def organisational_domain(domain: str) -> str:
    """Return the registered domain of `domain` by a simple suffix rule.

    The last two labels, or the last three when the second-to-last is a generic
    label under a two-letter country code (`news.example.com.vn` -> `example.com.vn`).
    Not the Public Suffix List: good enough for alignment between one sender's names.
    """
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def parse_nameserver(value: str) -> tuple[str, int]:
    """Parse `HOST[:PORT]` (an IPv6 address with a port in brackets: `[::1]:53`).

    Raises ValueError with a readable reason.
    """
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{value!r} is not HOST[:PORT]")
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    return host, int(port)


class DnsClient:
    """Answers TXT, address and MX questions; each check sets its own deadline first."""

    def __init__(self, *, nameserver: tuple[str, int] | None, timeout: float) -> None:
        self.nameserver = nameserver
        self.timeout = timeout
        self._resolver: dns.resolver.Resolver | None = None
        self._deadline = time.monotonic() + timeout

    def start(self) -> None:
        """Start a check: its look-ups together get `timeout` seconds from now."""
        self._deadline = time.monotonic() + self.timeout

    def _open(self) -> dns.resolver.Resolver:
        if self._resolver is None:
            if self.nameserver is not None:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [self.nameserver[0]]
                resolver.port = self.nameserver[1]
            else:
                try:
                    resolver = dns.resolver.Resolver()
                except dns.resolver.NoResolverConfiguration as exc:
                    raise DnsLookupError(
                        "this machine has no DNS resolver configured (/etc/resolv.conf)",
                        hint="Give one with --nameserver.",
                    ) from exc
            resolver.cache = None
            self._resolver = resolver
        return self._resolver

    def _query(self, name: str, rdtype: str) -> list[object]:
        resolver = self._open()
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DnsLookupError(f"DNS look-up of {rdtype} {name} timed out")
        resolver.timeout = resolver.lifetime = left
        try:
            answer = resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            raise DnsLookupError(
                f"DNS look-up of {rdtype} {name} timed out after {self.timeout:g} s"
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise DnsLookupError(f"DNS look-up of {rdtype} {name} failed (SERVFAIL)") from exc
        except (dns.exception.DNSException, ValueError) as exc:
            raise DnsLookupError(f"DNS look-up of {rdtype} {name} failed: {exc}") from exc
        return list(answer.rrset) if answer.rrset is not None else []

    def txt(self, name: str) -> list[str]:
        """Every TXT record at `name`, its strings joined (RFC 7208 3.3)."""
        records = []
        for rdata in self._query(name, "TXT"):
            strings: list[bytes] = list(rdata.strings)  # type: ignore[attr-defined]
            records.append(b"".join(strings).decode("utf-8", "replace"))
        return records

    def addresses(self, name: str, *, families: tuple[int, ...] = (4, 6)) -> list[IpAddress]:
        """The A and AAAA addresses of `name` (only the families asked)."""
        found: list[IpAddress] = []
        for family, rdtype in ((4, "A"), (6, "AAAA")):
            if family in families:
                found += [ipaddress.ip_address(str(r)) for r in self._query(name, rdtype)]
        return found

    def mx(self, name: str) -> list[str]:
        """The exchanges of `name`'s MX records, by preference."""
        records = sorted(
            self._query(name, "MX"),
            key=lambda r: r.preference,  # type: ignore[attr-defined]
        )
        return [r.exchange.to_text(omit_final_dot=True) for r in records]  # type: ignore[attr-defined]


def host_addresses(client: DnsClient, host: str) -> list[IpAddress]:
    """`host` itself when it is an IP address, else its A and AAAA addresses."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        return client.addresses(host)


__all__ = [
    "DnsClient",
    "DnsLookupError",
    "IpAddress",
    "host_addresses",
    "organisational_domain",
    "parse_nameserver",
]
