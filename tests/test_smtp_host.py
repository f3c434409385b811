"""`send` to an `smtp.host` by name, looked up through the system's resolver (getaddrinfo).

The look-ups go to a real DNS server (dnslib, tests/plugins/dns.py) on 127.0.0.1:53 of a
network namespace of the test's own (`unshare`: a user, network and mount namespace), whose
/etc/resolv.conf is bound over with one naming it: nothing leaves the machine, and the
machine's own resolver settings are untouched. Skipped where unshare or ip is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.sendproject import add_confirmed, write_send_project

ROOT = Path(__file__).resolve().parent.parent

# Run inside the namespaces: loopback up, resolv.conf naming 127.0.0.1, a DNS server there
# serving argv[1]'s records ("name TYPE" per line: A, TXT or FAIL), then `syndicate send` in
# argv[2]; exits with its status, its stderr passed on.
_RUNNER = """
import subprocess, sys
from pathlib import Path
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
resolv = Path(sys.argv[2]) / "resolv.conf"
resolv.write_text("nameserver 127.0.0.1\\noptions attempts:1 timeout:1\\n")
subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
from dnslib.server import DNSLogger, DNSServer
from tests.plugins.dns import Zone
zone = Zone()
for line in sys.argv[1].splitlines():
    name, kind = line.split()
    if kind == "A":
        zone.a(name, "127.0.0.1")
    elif kind == "TXT":
        zone.txt(name, "v=spf1 -all")
    else:
        zone.fail(name)
quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
server = DNSServer(zone, address="127.0.0.1", port=53, logger=quiet)
server.start_thread()
done = subprocess.run([sys.executable, "-m", "syndicate", "send"], cwd=sys.argv[2])
sys.exit(done.returncode)
"""


def _namespaces_work() -> bool:
    if sys.platform != "linux" or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(
        ["unshare", "-Urnm", "true"], capture_output=True, timeout=30, check=False
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _namespaces_work(), reason="needs unshare (user, network and mount namespaces) and ip"
)


def _send_to(tmp_path: Path, host: str, records: str) -> subprocess.CompletedProcess[str]:
    """`syndicate send` to one subscriber through smtp.host `host`, with the DNS serving
    `records`; its exit status and output."""
    project = write_send_project(tmp_path / "project", port=2525, connections=1, lease=30)
    config = project / "syndicate.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace('host = "127.0.0.1"', f'host = "{host}"'),
        encoding="utf-8",
    )
    add_confirmed(project, "", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        ["unshare", "-Urnm", sys.executable, "-c", _RUNNER, records, str(project)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow(seconds=3)
@pytest.mark.parametrize(
    ("records", "why"),
    [
        ("", "no such name (NXDOMAIN)"),
        ("smtp.news.example.org TXT", "a name with no address (NOERROR, no A or AAAA record)"),
    ],
)
def test_a_host_name_with_no_address_is_a_setup_error_not_a_wait(
    tmp_path: Path, records: str, why: str
) -> None:
    # A typo in smtp.host was taken for a server down: three tries over about 18 s, then
    # exit 75 and "try again later", which cron does for ever. The resolver's answer is
    # definite: exit 2, one line naming smtp.host, nothing sent or charged.
    done = _send_to(tmp_path, "smtp.news.example.org", records)
    assert done.returncode == 2, (why, done.stderr)
    last = done.stderr.splitlines()[-1]
    assert last.startswith("Error: smtp smtp.news.example.org:2525: the host name has no "), last
    assert last.endswith("Check smtp.host, or the DNS records of that name."), last
    assert "Traceback" not in done.stderr


@pytest.mark.slow(seconds=25)
def test_a_dns_server_that_fails_is_waited_for_as_a_server_down(tmp_path: Path) -> None:
    # SERVFAIL is no answer about the name: the look-up may pass later, so the run does what
    # it does for a server that is down (tries again, then exit 75 for cron to retry).
    done = _send_to(tmp_path, "smtp.news.example.org", "smtp.news.example.org FAIL")
    assert done.returncode == 75, done.stderr
    assert "smtp.host" not in done.stderr.splitlines()[-1], done.stderr
