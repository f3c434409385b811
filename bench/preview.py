"""Bench: how long a sign-up waits while `syndicate digest` previews over many new dumps.

Generates N dumps (bench/build.py's generator), then, while `syndicate digest`
runs in a subprocess over them, adds a subscriber every 50 ms through a
connection of its own (as the web app does) and records each wait. The
baseline is the same sign-ups with no preview running, in the same run.

    python bench/preview.py [N]        # default 10000 dumps
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.build import generate
from syndicate.store import open_database
from syndicate.store.subscribers import add_subscriber


def sign_ups(database: Path, until: subprocess.Popen[bytes] | None, count: int) -> list[float]:
    """Seconds each sign-up took: `count` of them, or as many as `until` runs."""
    waits: list[float] = []
    now = datetime.now(UTC)
    with open_database(database) as db:
        while True:
            if until is not None:
                try:
                    until.wait(timeout=0.05)
                    break
                except subprocess.TimeoutExpired:
                    pass
            elif len(waits) >= count:
                break
            started = time.perf_counter()
            try:
                add_subscriber(
                    db, f"b{until is None}{len(waits)}@example.org", language="vi", now=now
                )
                waits.append(time.perf_counter() - started)
            except Exception as exc:
                print(f"sign-up failed after {time.perf_counter() - started:.1f} s: {exc}")
                waits.append(float("inf"))
    return waits


def describe(waits: list[float]) -> str:
    done = [w for w in waits if w != float("inf")]
    failed = len(waits) - len(done)
    if not done:
        return f"{len(waits)} sign-ups, all failed"
    p95 = statistics.quantiles(done, n=20)[-1] if len(done) > 1 else done[0]
    return (
        f"{len(waits)} sign-ups, {failed} failed; median {statistics.median(done) * 1000:.1f} ms, "
        f"p95 {p95 * 1000:.1f} ms, max {max(done) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=10_000, help="number of dumps (10000)")
    count = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(work / "seeds", count)
        database = work / "syndicate.db"
        open_database(database).close()
        baseline = sign_ups(database, None, 40)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
        started = time.perf_counter()
        preview = subprocess.Popen(
            [sys.executable, "-m", "syndicate", "-q", "digest", "--out", "preview"],
            cwd=work,
            env=env,
        )
        during = sign_ups(database, preview, 0)
        seconds = time.perf_counter() - started
        print(f"{count} dumps: preview took {seconds:.1f} s, exit {preview.returncode}")
        print(f"baseline (no preview): {describe(baseline)}")
        print(f"during the preview:    {describe(during)}")
        done = [w for w in during if w != float("inf")]
        if done and baseline:
            ratio = max(done) / max(baseline)
            print(f"slowest sign-up during / slowest alone: {ratio:.1f}x")


if __name__ == "__main__":
    main()
