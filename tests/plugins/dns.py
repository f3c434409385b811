"""A real DNS server for tests: dnslib on 127.0.0.1 at a free UDP port, serving a zone dict.

Each test fills `zone` with records: `zone.txt("example.org", "v=spf1 -all")`,
`zone.a("mail.example.org", "127.0.0.1")`, `zone.mx(...)`, `zone.cname(name, target)`.
A name with no record at all answers NXDOMAIN; a name with other types answers NOERROR,
empty. A CNAME is answered as a recursive resolver does: the CNAME, then the target's
records of the type asked (and its own CNAME, and so on), in one answer.
`zone.fail(name)` makes look-ups of that name answer SERVFAIL.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RR, TXT, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer


@dataclass
class Zone(BaseResolver):  # type: ignore[misc]
    """The records served, by lower-case name: [(type name, rdata)]."""

    records: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    queries: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _add(self, name: str, rtype: str, rdata: Any) -> None:
        with self.lock:
            self.records.setdefault(name.lower().rstrip("."), []).append((rtype, rdata))

    def txt(self, name: str, text: str) -> None:
        """Add a TXT record, cut into 255-byte strings as DNS requires."""
        data = text.encode("utf-8")
        self._add(name, "TXT", TXT([data[i : i + 255] for i in range(0, len(data), 255)]))

    def a(self, name: str, address: str) -> None:
        self._add(name, "AAAA" if ":" in address else "A", (AAAA if ":" in address else A)(address))

    def mx(self, name: str, exchange: str, preference: int = 10) -> None:
        self._add(name, "MX", MX(exchange, preference))

    def cname(self, name: str, target: str) -> None:
        self._add(name, "CNAME", CNAME(target))

    def remove(self, name: str) -> None:
        """Remove every record of `name` (it then answers NXDOMAIN)."""
        with self.lock:
            self.records.pop(name.lower(), None)

    def fail(self, name: str) -> None:
        self.failing.add(name.lower())

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries.append((qname, qtype))
            if qname in self.failing:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            name = qname
            for _ in range(8):  # a chain of CNAMEs, as far as a resolver follows one
                found = self.records.get(name)
                if found is None:
                    if name == qname:
                        reply.header.rcode = RCODE.NXDOMAIN
                    return reply
                alias = next((r for t, r in found if t == "CNAME"), None)
                if alias is not None and qtype != "CNAME":
                    reply.add_answer(RR(name, QTYPE.CNAME, rdata=alias, ttl=60))
                    name = str(alias.label).rstrip(".").lower()
                    continue
                for rtype, rdata in found:
                    if rtype == qtype:
                        reply.add_answer(RR(name, getattr(QTYPE, rtype), rdata=rdata, ttl=60))
                break
        return reply


@dataclass
class DnsServer:
    host: str
    port: int
    zone: Zone

    @property
    def address(self) -> str:
        """The --nameserver value."""
        return f"{self.host}:{self.port}"


@contextlib.contextmanager
def run_dns_server(zone: Zone | None = None) -> Iterator[DnsServer]:
    """Serve `zone` over UDP on 127.0.0.1 for the block."""
    zone = zone or Zone()
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=quiet)
    # dnslib's start_thread() polls for shutdown every 0.5 s (socketserver's default), so
    # each stop waited half a second: poll every 10 ms instead (idle wake-ups are cheap).
    server.thread = threading.Thread(
        target=server.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    server.thread.start()
    try:
        yield DnsServer("127.0.0.1", server.server.server_address[1], zone)
    finally:
        server.stop()
        server.server.server_close()
        server.thread.join(timeout=10)


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A DNS server on 127.0.0.1 answering from an empty zone the test fills."""
    with run_dns_server() as server:
        yield server


@pytest.fixture
def silent_nameserver() -> Iterator[str]:
    """HOST:PORT of a UDP socket that never answers: every look-up there times out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"
