"""Benchmark the cost of one sign-up through `syndicate serve`, with and without the rate limit.

Runs two `syndicate serve` subprocesses on one database, one with the sign-up rate limit
off (`rate_limit = 0`) and one with it on (a limit no client reaches), and posts sign-ups
to each in turn from one client, one request at a time: the same network every time
(its count is updated), and a new network every time (X-Forwarded-For from the trusted
local proxy: a count is inserted). Each run signs up one address again and again (one
confirmation mail, then none: the cost measured is the request, the count and the
sign-up's one read and one write). Reports the median and p95 latency and the server's
CPU time per sign-up (from /proc), best of `--runs` runs.

    python bench/signup.py [--requests 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serving(work: Path, config: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [PYTHON, "-m", "syndicate", "--config", str(config), "serve", "--port", str(port)]
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise SystemExit(f"serve exited early with {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise SystemExit("serve did not start in 30 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def run(url: str, pid: int, *, requests: int, tag: str, new_network: bool) -> dict[str, float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=10, headers={"origin": url.rstrip("/")}) as client:
        cpu = cpu_seconds(pid)
        for n in range(requests):
            headers = {"x-forwarded-for": f"2001:db8:{n >> 16:x}:{n & 0xFFFF:x}::1"}
            started = time.perf_counter()
            answer = client.post(
                "subscribe",
                data={"email": f"{tag}@example.org", "language": "vi"},
                headers=headers if new_network else None,
            )
            latencies.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.status_code
        cpu = cpu_seconds(pid) - cpu
    latencies.sort()
    return {
        "median_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "cpu_ms": cpu / requests * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-signup-") as tmp:
        work = Path(tmp)
        (work / "seeds").mkdir()
        configs = {}
        for name, limit in (("off", 0), ("on", 100_000_000)):
            configs[name] = work / f"{name}.toml"
            configs[name].write_text(
                f'[paths]\ndatabase = "{work / "syndicate.db"}"\n'
                f'outbox = "{work / "outbox"}"\noutput = "{work / "output"}"\n'
                f"[subscribe]\nrate_limit = {limit}\n",
                encoding="utf-8",
            )
        results: dict[str, list[dict[str, float]]] = {}
        with (
            serving(work, configs["off"]) as (off_url, off_pid),
            serving(work, configs["on"]) as (on_url, on_pid),
        ):
            for r in range(args.runs):
                for case, url, pid, new in (
                    ("limit off", off_url, off_pid, False),
                    ("limit on, one network", on_url, on_pid, False),
                    ("limit on, a new network each", on_url, on_pid, True),
                ):
                    tag = f"{case.replace(' ', '').replace(',', '')}-{r}"
                    results.setdefault(case, []).append(
                        run(url, pid, requests=args.requests, tag=tag, new_network=new)
                    )
    print(f"{args.requests} sign-ups per run, one at a time, best of {args.runs} runs")
    print(f"{'case':32} {'median ms':>10} {'p95 ms':>8} {'CPU ms/sign-up':>15}")
    for case, found in results.items():
        print(
            f"{case:32} {min(r['median_ms'] for r in found):10.2f} "
            f"{min(r['p95_ms'] for r in found):8.2f} {min(r['cpu_ms'] for r in found):15.2f}"
        )


if __name__ == "__main__":
    main()
