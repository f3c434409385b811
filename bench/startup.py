"""Benchmark how long a command takes to start and finish when it has little to do.

`bounces -` runs once for every bounce an MTA pipes to it, and cron and scripts start
`subscribers` commands one by one, so their start-up is most of their cost. Each
command runs in a child process, the runs of all commands taken in turn; the figure is
the median CPU time (user + system) of a run, and its ratio to the baseline measured in
the same run: a bare `python -c pass` of the same interpreter. Bytecode is cached (in a
temporary PYTHONPYCACHEPREFIX, warmed by one uncounted run of each), as in an installed
syndicate.

    python bench/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOUNCE = ROOT / "tests" / "data" / "bounces" / "gmail-hard.eml"

COMMANDS: dict[str, list[str]] = {
    "python -c pass (baseline)": ["-c", "pass"],
    "bounces - (one DSN)": ["-m", "syndicate", "bounces", "-"],
    "subscribers list": ["-m", "syndicate", "subscribers", "list"],
    "subscribers add": ["-m", "syndicate", "subscribers", "add"],
    "digest (renders)": ["-m", "syndicate", "digest", "--out", "preview"],
}


def run_once(argv: list[str], folder: Path, env: dict[str, str], n: int) -> float:
    """CPU seconds of one run of `python argv` in `folder`."""
    if argv[-1] == "add":
        argv = [*argv, f"reader{n}@example.org"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(BOUNCE, "rb") as stdin:
        subprocess.run(
            [sys.executable, *argv],
            cwd=folder,
            env=env,
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / "seeds", folder / "seeds")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
        subprocess.run(
            [sys.executable, "-m", "syndicate", "-q", "build"], cwd=folder, env=env, check=True
        )
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for n in range(-1, args.runs):  # -1: the uncounted warm-up
            for name, argv in COMMANDS.items():
                seconds = run_once(argv, folder, env, n)
                if n >= 0:
                    times[name].append(seconds)
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"median CPU of {args.runs} runs each, and its ratio to the baseline:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:28} {median * 1000:6.0f} ms  {median / base:5.1f}x")


if __name__ == "__main__":
    main()
