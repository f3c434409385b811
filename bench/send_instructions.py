"""Instructions a message costs `syndicate send`, counted by valgrind's callgrind.

Wall-clock rates swing with whatever else the machine runs; an instruction count does not
(two runs of the same code here differ by about 0.2%). For each code tree (this checkout,
and with --against REV a `git worktree` of REV made for the run), one send to Postfix's
smtp-sink of `--small` and one of `--large` confirmed subscribers run under callgrind; the
difference over the difference in messages is the cost of one message, start-up, build and
render cancelled out. Each store is made by its own tree's code, and sent to once before
the counted run (the build, the digest and the compiled templates are in place then).

    python bench/send_instructions.py                       # this checkout
    python bench/send_instructions.py --against 346adae     # and the code of 346adae

Needs valgrind and smtp-sink (Debian's valgrind and postfix packages). Slow: about a
minute a tree under callgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import send as bench_send  # noqa: E402 - bench/send.py, beside this file

_COLLECTED = re.compile(rb"Collected : (\d+)")


def _env(tree: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # The tree's own code first (ahead of an editable install of this checkout), its
    # bytecode cached outside the tree.
    return env | {"PYTHONPATH": str(tree), "PYTHONPYCACHEPREFIX": str(cache)}


def _project(tree: Path, folder: Path, size: int, port: int, env: dict[str, str]) -> None:
    """A project of `size` subscribers made by `tree`'s code, sent to once."""
    script = (
        "import sys; from pathlib import Path;"
        "sys.path[:0] = [sys.argv[1], sys.argv[1] + '/bench'];"
        "import send; send.make_project(Path(sys.argv[2]), subscribers=int(sys.argv[3]),"
        " articles=10, port=int(sys.argv[4]), conns=4)"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tree), str(folder), str(size), str(port)],
        env=env,
        check=True,
    )
    subprocess.run(
        [sys.executable, "-m", "syndicate", "-q", "send"],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
    )
    with sqlite3.connect(folder / "syndicate.db") as conn:
        conn.execute("DELETE FROM deliveries")


def _instructions(folder: Path, env: dict[str, str]) -> int:
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={folder / 'callgrind.out'}",
            sys.executable,
            "-m",
            "syndicate",
            "-q",
            "send",
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        check=True,
    )
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no count:\n{done.stderr.decode()[-2000:]}")
    return int(found.group(1))


def per_message(tree: Path, small: int, large: int, port: int, work: Path) -> float:
    env = _env(tree, work / "pycache")
    counts = []
    for size in (small, large):
        folder = work / f"{tree.name}-{size}"
        _project(tree, folder, size, port, env)
        counts.append(_instructions(folder, env))
    return (counts[1] - counts[0]) / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument("--against", metavar="REV", help="also count the code of this commit")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    port = bench_send.free_port()
    sink = bench_send.start_sink("smtp-sink", port, Path(os.devnull))
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        trees = [("this checkout", ROOT)]
        if args.against:
            old = work / "against"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.against],
                check=True,
                capture_output=True,
            )
            trees.append((args.against, old))
        try:
            results = [
                (name, per_message(tree, args.small, args.large, port, work))
                for name, tree in trees
            ]
        finally:
            bench_send.stop_sink(sink)
            if args.against:
                remove = ["worktree", "remove", "--force", str(work / "against")]
                subprocess.run(["git", "-C", str(ROOT), *remove], check=False)
    for name, cost in results:
        line = f"{name}: {cost / 1000:.1f}k instructions a message"
        if name != results[0][0]:
            line += f" (this checkout: {results[0][1] / cost:.3f}x its instructions)"
        print(line)


if __name__ == "__main__":
    main()
