"""Benchmark `syndicate subscribers import`: wall and CPU time for a list of N rows, on
SQLite and on PostgreSQL (a throwaway cluster, as the tests start: tests/plugins/postgres.py,
with fsync and synchronous_commit turned back on, as a deployed server has them).

The list has N rows: most new confirmed addresses, every 50th unsubscribed, every 100th a
bad address (reported and skipped). Each run imports it into a new, empty store, as
`python -m syndicate` in a child process; its CPU is the child's (user + system; the
PostgreSQL server's own is not counted). With `--against DIR` (another checkout's source
tree, e.g. `git archive main | tar -x -C /tmp/base`) the two codes run in alternated pairs,
so a busy machine weighs on both alike.

    python bench/subscribers_import.py --n 3000 --rounds 3 --against /tmp/base
    python bench/subscribers_import.py --n 3000 --no-fsync   # the tests' cluster as it is
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_list(path: Path, n: int) -> None:
    lines = ["email,name,language,status"]
    for i in range(1, n + 1):
        if i % 100 == 0:
            lines.append(f"not-an-address-{i},,vi,confirmed")
        else:
            status = "unsubscribed" if i % 50 == 0 else "confirmed"
            lines.append(f"reader{i}@example.org,Reader {i},vi,{status}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_import(code: Path, folder: Path, csv_file: Path, url: str) -> tuple[float, float]:
    """Import `csv_file` into a new store with the syndicate in `code`: (wall, CPU) seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    env["PYTHONPATH"] = str(code)
    if url:
        env["SYNDICATE_STORE_URL"] = url
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "syndicate", "-q", "subscribers", "import", str(csv_file)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):  # 1: the bad rows
        raise SystemExit(f"import failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="rows in the list")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each code and engine")
    parser.add_argument("--against", type=Path, default=None, help="another source tree")
    parser.add_argument(
        "--no-fsync", action="store_true", help="keep the tests' fsync=off on PostgreSQL"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.plugins.postgres import start_cluster

    codes = {"this": ROOT}
    if args.against is not None:
        codes["against"] = args.against.resolve()
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    cluster = start_cluster()
    try:
        # A server as deployed: each commit waits for its WAL flush (the tests' cluster
        # turns fsync and synchronous_commit off for speed).
        import psycopg

        with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
            durable = "off" if args.no_fsync else "on"
            admin.execute(f"ALTER SYSTEM SET fsync = {durable}")
            admin.execute(f"ALTER SYSTEM SET synchronous_commit = {durable}")
            admin.execute("SELECT pg_reload_conf()")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            csv_file = folder / "list.csv"
            write_list(csv_file, args.n)
            for round_ in range(args.rounds):
                for engine in ("sqlite", "postgresql"):
                    order = list(codes) if round_ % 2 == 0 else list(reversed(codes))
                    for name in order:
                        run = folder / f"{name}-{engine}-{round_}"
                        run.mkdir()
                        url = cluster.new_database() if engine == "postgresql" else ""
                        timing = run_import(codes[name], run, csv_file, url)
                        results.setdefault((name, engine), []).append(timing)
    finally:
        cluster.stop("immediate")
    fsync = "off" if args.no_fsync else "on"
    print(
        f"subscribers import of {args.n} rows, {args.rounds} rounds, PostgreSQL fsync {fsync} "
        "(median; all runs)"
    )
    for (name, engine), timings in sorted(results.items(), key=lambda item: item[0][1]):
        walls = [w for w, _ in timings]
        cpus = [c for _, c in timings]
        every = f"wall {', '.join(f'{w:.2f}' for w in walls)}; CPU "
        every += ", ".join(f"{c:.2f}" for c in cpus)
        print(
            f"  {engine:10} {name:8} wall {statistics.median(walls):6.2f} s  "
            f"CPU {statistics.median(cpus):6.2f} s   ({every})"
        )


if __name__ == "__main__":
    main()
