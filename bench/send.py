"""Benchmark `syndicate send` against an SMTP sink in another process, with a same-run floor.

For each size (default 10,000 and 100,000 confirmed subscribers) and each sink
(an aiosmtpd sink; Postfix's smtp-sink where installed):

- ours:  `python -m syndicate send --json` (a subprocess) delivering a 10-article digest;
- floor: a bare aiosmtplib loop (another subprocess) sending one pre-built message's bytes
         the same number of times, over the same number of connections, each carrying the
         same number of messages (smtp.messages_per_connection).

Reports messages/s (ours over the send loop, and end to end including start-up, build
and render), ours as a share of the floor, CPU ms per message and peak memory (RSS).

    python bench/send.py                      # 10k and 100k, every sink found
    python bench/send.py --sizes 10000 --sinks aiosmtpd
    python bench/send.py --bounce-address bounces@news.example.org   # VERP: MAIL FROM per message
    python bench/send.py --sizes 2000 --deferred 20 --retry-window 5   # 20% answer 451
    python bench/send.py --sizes 10000 --workers 1,2   # also `send --workers 2`

With --workers N,M... ours runs once per worker count (`send --workers N`: N processes,
each with --connections connections); each is reported as msg/s and a share of the
floor (one process), e.g. `ours_w2_share_of_floor`.

With --deferred PCT the aiosmtpd sink answers `451 4.7.1` to that share of the
recipients, always; the run is then compared with a run of the same size with no
deferrals: it should take at most that time plus smtp.retry_window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SENDER = "news@example.org"


# --- sink and floor: run as child processes of this script -----------------------------------


def run_aiosmtpd_sink(port: int, save: Path, defer_every: int = 0) -> None:
    """An aiosmtpd server that accepts everything (but every `defer_every`-th reader: 451),
    keeping only the first message."""
    from aiosmtpd.controller import Controller

    class Sink:
        saved = False

        async def handle_RCPT(
            self, server: object, session: object, envelope: object, address: str, options: object
        ) -> str:
            number = address.split("@")[0].removeprefix("reader")
            if defer_every and number.isdigit() and int(number) % defer_every == 0:
                return "451 4.7.1 greylisted, try again later"
            envelope.rcpt_tos.append(address)  # type: ignore[attr-defined]
            return "250 OK"

        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            if not Sink.saved:
                Sink.saved = True
                save.write_bytes(envelope.original_content or envelope.content)  # type: ignore[attr-defined]
            return "250 2.0.0 OK"

    controller = Controller(Sink(), hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        controller.stop()


def run_floor(port: int, message_file: Path, count: int, connections: int, per_conn: int) -> None:
    """Send one pre-built message `count` times over `connections` connections; print JSON."""
    import aiosmtplib

    message = message_file.read_bytes()
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, start_tls=False)
            await client.connect()
            options = ["BODY=8BITMIME"] if client.supports_extension("8bitmime") else []
            used = 0
            while remaining > 0 and used < per_conn:
                remaining -= 1
                used += 1
                await client.sendmail(
                    SENDER, [f"r{remaining}@example.org"], message, mail_options=options
                )
            await client.quit()

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return time.perf_counter() - started

    seconds = asyncio.run(main())
    print(json.dumps({"sent": count, "seconds": seconds}))


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class Measure:
    seconds: float  # the send loop's time (reported by the process)
    wall: float  # the whole process
    cpu: float  # user + system seconds of the process
    max_rss_mb: float
    sent: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"sink on port {port} did not start")


def measure(
    args: list[str], *, cwd: Path, env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> tuple[str, Measure]:
    """Run a child and return its stdout with wall time, CPU time and peak RSS (wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stderr is not None
    out = process.stdout.read()
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode not in ok:
        raise SystemExit(f"{' '.join(args)} failed ({process.returncode}):\n{err.decode()}")
    cpu = usage.ru_utime + usage.ru_stime
    return out.decode(), Measure(0.0, wall, cpu, usage.ru_maxrss / 1024, 0)


DUMP = (
    "{title}\n{published}\n{{head}}\n"
    "QTO - Sáng nay {day}/11, tại TP. Bến Lam, {title_lower} đã diễn ra với sự tham dự của "
    "nhiều đại biểu, lãnh đạo sở, ngành và người dân địa phương.\n"
    "Theo ban tổ chức, hoạt động nhằm nâng cao chất lượng đời sống và phát triển kinh tế - "
    "xã hội của tỉnh trong giai đoạn mới.\n"
    "Quang cảnh sự kiện - Ảnh: T.P\n"
    "Các đại biểu đánh giá cao kết quả đạt được và đề xuất nhiều giải pháp cụ thể cho thời "
    "gian tới, trong đó chú trọng chuyển đổi số và cải cách hành chính.\n"
    "Trúc Phương\n"
)


def make_project(
    folder: Path,
    *,
    subscribers: int,
    articles: int,
    port: int,
    conns: int,
    bounce: str = "",
    url: str = "",
) -> None:
    seeds = folder / "seeds"
    seeds.mkdir(parents=True)
    for i in range(articles):
        title = f"Sự kiện số {i + 1} của tỉnh Lam Giang"
        text = DUMP.format(
            title=title,
            title_lower=title.lower(),
            published=f"{i + 1:02d}/11/2024 0{i % 10}:15",
            day=i + 1,
        )
        (seeds / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    write_config(folder, port=port, conns=conns, bounce=bounce)
    fill_subscribers(folder, subscribers, url)


def fill_subscribers(folder: Path, count: int, url: str = "") -> None:
    """`count` confirmed subscribers, inserted fast: one executemany on SQLite, COPY on
    PostgreSQL (the store is made and migrated by syndicate first)."""
    sys.path.insert(0, str(ROOT))
    from syndicate.store import open_database

    now = datetime.now(UTC).isoformat(timespec="seconds")
    rows = (
        (
            f"reader{i}@example.org",
            f"reader{i}@example.org",
            "en" if i % 4 == 0 else "vi",
            "confirmed",
            now,
            now,
            now,
            os.urandom(16),
        )
        for i in range(count)
    )
    columns = (
        "email, email_key, language, status, created_at, updated_at, confirmed_at, token_nonce"
    )
    with open_database(folder / "syndicate.db", url=url) as db:
        if not url:
            with db.transaction() as conn:
                conn.executemany(
                    f"INSERT INTO subscribers ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    rows,
                )
            return
    import psycopg

    with psycopg.connect(url) as conn:
        with (
            conn.cursor() as cursor,
            cursor.copy(f"COPY subscribers ({columns}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        conn.execute("ANALYZE")


def write_config(
    folder: Path, *, port: int, conns: int, retry_window: float | None = None, bounce: str = ""
) -> None:
    window = f"retry_window = {retry_window}\n" if retry_window is not None else ""
    (folder / "syndicate.toml").write_text(
        '[site]\nbase_url = "https://news.example.org/"\n'
        f'[mail]\ntransport = "smtp"\nfrom = "Tin mới <{SENDER}>"\n'
        f'bounce_address = "{bounce}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\nconnections = {conns}\n'
        f"messages_per_connection = 100\n{window}[digest]\nmax_articles = 10\n",
        encoding="utf-8",
    )


def pg_commits(url: str) -> int:
    """Transactions committed in the PostgreSQL database at `url` so far (0 for SQLite)."""
    if not url:
        return 0
    import psycopg

    with psycopg.connect(url) as pg:
        row = pg.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def reset_ledger(folder: Path, url: str = "") -> None:
    if url:
        import psycopg

        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute("DELETE FROM deliveries")
            pg.execute("VACUUM ANALYZE deliveries")  # as SQLite's DELETE leaves no dead rows
        return
    with sqlite3.connect(folder / "syndicate.db") as conn:
        conn.execute("DELETE FROM deliveries")


def start_sink(kind: str, port: int, save: Path, defer_every: int = 0) -> subprocess.Popen[bytes]:
    if kind == "aiosmtpd":
        args = [sys.executable, __file__, "--sink-server", str(port), "--save", str(save)]
        process = subprocess.Popen(
            [*args, "--defer-every", str(defer_every)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        process.stdout.readline()
    else:
        sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        args = [sink]  # advertises 8BITMIME and PIPELINING by default
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += [f"127.0.0.1:{port}", "1024"]
        process = subprocess.Popen(args, stdin=subprocess.PIPE)
    wait_port(port)
    return process


def stop_sink(process: subprocess.Popen[bytes]) -> None:
    if process.stdin:
        process.stdin.close()
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_ours(folder: Path, env: dict[str, str], size: int, workers: int = 1) -> Measure:
    args = [sys.executable, "-m", "syndicate", "send", "--json", "--workers", str(workers)]
    out, ours = measure(args, cwd=folder, env=env)
    summary = json.loads(out)
    ours.seconds, ours.sent = float(summary["seconds"]), int(summary["sent"])
    if ours.sent != size:
        raise SystemExit(f"ours sent {ours.sent} of {size}: {summary}")
    return ours


def run_floor_child(
    folder: Path, env: dict[str, str], port: int, saved: Path, size: int, conns: int
) -> Measure:
    args = [sys.executable, __file__, "--floor", str(port), "--message", str(saved)]
    args += ["--count", str(size), "--connections", str(conns)]
    out, floor = measure(args, cwd=folder, env=env)
    floor.seconds, floor.sent = float(json.loads(out)["seconds"]), size
    return floor


def bench_size(
    size: int,
    sinks: list[str],
    *,
    conns: int,
    articles: int,
    repeat: int,
    bounce: str = "",
    workers: tuple[int, ...] = (1,),
    pg_url: str = "",
) -> list[dict[str, object]]:
    """Ours (SQLite; with `pg_url` also PostgreSQL) and the floor, alternating; best of each."""
    results = []
    with tempfile.TemporaryDirectory(prefix=f"bench-send-{size}-") as tmp:
        stores = {"": (Path(tmp) / "sqlite", "")}  # key prefix -> (project folder, store URL)
        if pg_url:
            stores["pg_"] = (Path(tmp) / "postgresql", pg_url)
        for folder, url in stores.values():
            make_project(
                folder,
                subscribers=size,
                articles=articles,
                port=0,
                conns=conns,
                bounce=bounce,
                url=url,
            )
        saved = Path(tmp) / "message.eml"
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
        base_env["SYNDICATE_SECRET"] = "bench-secret"  # noqa: S105 - a throwaway benchmark key
        envs = {
            key: {**base_env, "SYNDICATE_STORE_URL": url} if url else base_env
            for key, (_, url) in stores.items()
        }
        for sink_kind in sinks:
            port = free_port()
            for folder, _url in stores.values():
                write_config(folder, port=port, conns=conns, bounce=bounce)
            sink = start_sink(sink_kind, port, saved)
            try:
                best: dict[tuple[str, int], Measure] = {}  # (store, --workers) -> best run
                commits: dict[str, float] = {}
                floor = None
                for _ in range(repeat):  # best of `repeat`, alternating: the host is shared
                    for key, (folder, url) in stores.items():
                        for count in sorted({1, *workers}):
                            reset_ledger(folder, url)
                            before = pg_commits(url)
                            run = run_ours(folder, envs[key], size, count)
                            if url and count == 1:  # transactions the store committed, a message
                                time.sleep(1.0)  # the server's statistics lag up to 0.5 s
                                commits[key] = (pg_commits(url) - before) / size
                            old = best.get((key, count))
                            if old is None or run.seconds < old.seconds:
                                best[key, count] = run
                    if not saved.exists():
                        raise SystemExit("no message was saved for the floor (run aiosmtpd first)")
                    run = run_floor_child(Path(tmp), base_env, port, saved, size, conns)
                    floor = run if floor is None or run.seconds < floor.seconds else floor
                assert floor is not None
            finally:
                stop_sink(sink)
            row: dict[str, object] = {
                "subscribers": size,
                "sink": sink_kind,
                "connections": conns,
                "bounce_address": bounce,
                "message_bytes": saved.stat().st_size,
                "floor_msgs_per_s": round(size / floor.seconds, 1),
                "floor_cpu_ms_per_msg": round(floor.cpu * 1000 / size, 3),
                "floor_peak_rss_mb": round(floor.max_rss_mb, 1),
            }
            for (key, count), run in sorted(best.items()):
                name = f"{key}ours" if count == 1 else f"{key}ours_w{count}"
                row[f"{name}_msgs_per_s"] = round(size / run.seconds, 1)
                row[f"{name}_share_of_floor"] = round(floor.seconds / run.seconds, 3)
                row[f"{name}_cpu_ms_per_msg"] = round(run.cpu * 1000 / size, 3)
                row[f"{name}_peak_rss_mb"] = round(run.max_rss_mb, 1)
                if count == 1:
                    row[f"{name}_end_to_end_msgs_per_s"] = round(size / run.wall, 1)
                    row[f"{name}_wall_s"] = round(run.wall, 2)
            for key, per_message in commits.items():
                row[f"{key}commits_per_msg"] = round(per_message, 2)
            if pg_url:
                row["pg_over_sqlite_w1"] = round(best["", 1].seconds / best["pg_", 1].seconds, 3)
            print(json.dumps(row), flush=True)
            if pg_url:
                print(
                    f"{size} subscribers, {sink_kind}: PostgreSQL 1 worker / SQLite 1 worker = "
                    f"{row['pg_over_sqlite_w1']} (target >= 0.8)",
                    flush=True,
                )
                for count in workers:
                    if count > 1:
                        print(
                            f"{size} subscribers, {sink_kind}: PostgreSQL {count} workers / "
                            f"floor = {row[f'pg_ours_w{count}_share_of_floor']}"
                            + (" (target >= 1.3)" if count == 2 else ""),
                            flush=True,
                        )
            results.append(row)
    return results


def claim_plans(folder: Path, url: str, conns: int) -> str:
    """The plan of the ledger's claim statement on this store, with the parameters a worker of
    a new run uses on the day just sent: PostgreSQL's EXPLAIN after ANALYZE, SQLite's
    EXPLAIN QUERY PLAN (after ANALYZE too)."""
    sys.path.insert(0, str(ROOT))
    from syndicate.send.deliver import CLAIM_PER_CONNECTION, PAGE_SIZE
    from syndicate.store import open_database
    from syndicate.store.ledger import claim_statement, lease_stamp

    with open_database(folder / "syndicate.db", url=url) as db:
        db.conn.execute("ANALYZE")
        (day,) = db.conn.execute("SELECT max(digest_day) FROM deliveries").fetchone()
        now = datetime.now(UTC)
        params = {
            "day": day,
            "owner": "bench-run/1",
            "until": lease_stamp(now + timedelta(seconds=300)),
            "at": lease_stamp(now),
            "now": now.isoformat(timespec="seconds"),
            "run_like": "bench-run/%",
            "limit": min(PAGE_SIZE, CLAIM_PER_CONNECTION * conns),
            "max_attempts": 3,
            "confirmed_by": None,
        }
        explain = "EXPLAIN " if url else "EXPLAIN QUERY PLAN "
        with db.transaction(rows_only=True) as conn:  # EXPLAIN runs nothing; rolled back anyway
            rows = conn.execute(explain + claim_statement(db.dialect), params).fetchall()
    if url:
        return "\n".join(str(r[0]) for r in rows)
    return "\n".join(f"{r[1]:>3} {r[3]}" for r in rows)


def bench_memory(
    sizes: list[int],
    *,
    limit: int,
    conns: int,
    articles: int,
    new_pg: Callable[[], str] | None,
    sink_kind: str,
) -> None:
    """Peak RSS of `send --limit` on stores of each size, on each engine; the claim's plan on
    the largest."""
    engines: dict[str, Callable[[], str]] = {"SQLite": str}  # str(): "", the SQLite file
    if new_pg is not None:
        engines["PostgreSQL"] = new_pg
    for engine, new_store in engines.items():
        peaks: dict[int, float] = {}
        for size in sizes:
            url = new_store()
            with tempfile.TemporaryDirectory(prefix=f"bench-send-mem-{size}-") as tmp:
                folder = Path(tmp)
                started = time.perf_counter()
                make_project(
                    folder, subscribers=size, articles=articles, port=0, conns=conns, url=url
                )
                filled = time.perf_counter() - started
                port = free_port()
                write_config(folder, port=port, conns=conns)
                env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
                env["SYNDICATE_SECRET"] = "bench-secret"  # noqa: S105 - a throwaway benchmark key
                if url:
                    env["SYNDICATE_STORE_URL"] = url
                sink = start_sink(sink_kind, port, folder / "message.eml")
                try:
                    args = [sys.executable, "-m", "syndicate", "send", "--json"]
                    out, run = measure([*args, "--limit", str(limit)], cwd=folder, env=env)
                finally:
                    stop_sink(sink)
                summary = json.loads(out)
                if int(summary["sent"]) != min(limit, size):
                    raise SystemExit(f"sent {summary['sent']} of {min(limit, size)}: {summary}")
                peaks[size] = run.max_rss_mb
                print(
                    json.dumps(
                        {
                            "engine": engine,
                            "subscribers": size,
                            "sent": summary["sent"],
                            "fill_s": round(filled, 1),
                            "send_wall_s": round(run.wall, 2),
                            "send_loop_s": round(float(summary["seconds"]), 2),
                            "peak_rss_mb": round(run.max_rss_mb, 1),
                        }
                    ),
                    flush=True,
                )
                if size == max(sizes):
                    print(f"{engine} claim plan, {size} subscribers, after ANALYZE:")
                    print(claim_plans(folder, url, conns), flush=True)
        small, large = min(peaks), max(peaks)
        print(
            f"{engine}: peak RSS of send --limit {limit}, {large} / {small} subscribers = "
            f"{peaks[large]:.1f} / {peaks[small]:.1f} MB = {peaks[large] / peaks[small]:.2f}x"
            " (target <= 1.2)",
            flush=True,
        )


def bench_deferred(
    size: int, *, percent: int, conns: int, articles: int, window: float | None
) -> None:
    """The same send with no deferrals, then with `percent`% of recipients always answering 451."""
    defer_every = round(100 / percent)
    deferred = len(range(0, size, defer_every))
    with tempfile.TemporaryDirectory(prefix=f"bench-send-deferred-{size}-") as tmp:
        folder = Path(tmp)
        make_project(folder, subscribers=size, articles=articles, port=0, conns=conns)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
        env["SYNDICATE_SECRET"] = "bench-secret"  # noqa: S105 - a throwaway benchmark key
        seconds: dict[int, float] = {}
        for every in (0, defer_every):
            port = free_port()
            write_config(folder, port=port, conns=conns, retry_window=window)
            reset_ledger(folder)
            sink = start_sink("aiosmtpd", port, folder / "message.eml", every)
            try:
                out, _run = measure(
                    [sys.executable, "-m", "syndicate", "send", "--json"],
                    cwd=folder,
                    env=env,
                    ok=(0, 1),
                )
            finally:
                stop_sink(sink)
            summary = json.loads(out)
            expected = size - (deferred if every else 0)
            if int(summary["sent"]) != expected:
                raise SystemExit(f"sent {summary['sent']} of {expected}: {summary}")
            seconds[every] = float(summary["seconds"])
        row = {
            "subscribers": size,
            "deferred": deferred,
            "retry_window_s": window,
            "no_deferrals_s": round(seconds[0], 2),
            "with_deferrals_s": round(seconds[defer_every], 2),
            "bound_s": round(seconds[0] + (window or 300.0), 2),
            "within_bound": seconds[defer_every] <= seconds[0] + (window or 300.0),
        }
        print(json.dumps(row), flush=True)


@contextmanager
def pg_cluster(wanted: bool) -> Iterator[Callable[[], str] | None]:
    """With `wanted`, a throwaway PostgreSQL cluster (the tests' own, as bench/build.py uses):
    yields a maker of new empty databases' URLs; else None."""
    if not wanted:
        yield None
        return
    sys.path.insert(0, str(ROOT))
    from tests.plugins.postgres import start_cluster

    cluster = start_cluster()
    try:
        yield cluster.new_database
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--sinks", default="aiosmtpd,smtp-sink")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--articles", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs of each side")
    parser.add_argument("--deferred", type=int, default=0, help="percent of recipients: 451")
    parser.add_argument("--retry-window", type=float, default=None, help="smtp.retry_window")
    parser.add_argument("--defer-every", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--bounce-address", default="", help="mail.bounce_address (VERP envelope per message)"
    )
    parser.add_argument("--sink-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--floor", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--message", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--workers", default="1", help="`send --workers` counts to run, e.g. 1,2 (1 always runs)"
    )
    parser.add_argument(
        "--postgresql",
        action="store_true",
        help="also run with the store on a throwaway PostgreSQL cluster, and compare",
    )
    parser.add_argument(
        "--memory",
        default="",
        metavar="SIZES",
        help="instead: peak RSS of `send --limit` on stores of these sizes, e.g. 10000,1000000",
    )
    parser.add_argument("--limit", type=int, default=10_000, help="with --memory: send --limit")
    args = parser.parse_args()
    if args.sink_server:
        run_aiosmtpd_sink(args.sink_server, args.save, args.defer_every)
        return
    if args.deferred:
        for size in (int(s) for s in args.sizes.split(",")):
            bench_deferred(
                size,
                percent=args.deferred,
                conns=args.connections,
                articles=args.articles,
                window=args.retry_window,  # None: the config leaves it out (older versions)
            )
        return
    if args.floor:
        run_floor(args.floor, args.message, args.count, args.connections, 100)
        return
    sinks = [s for s in args.sinks.split(",") if s]
    if "smtp-sink" in sinks and not (
        shutil.which("smtp-sink") or Path("/usr/sbin/smtp-sink").exists()
    ):
        print("smtp-sink not installed (Debian package postfix); skipping it", file=sys.stderr)
        sinks.remove("smtp-sink")
    if sinks and sinks[0] != "aiosmtpd" and "aiosmtpd" in sinks:
        sinks.remove("aiosmtpd")
        sinks.insert(0, "aiosmtpd")  # it saves the message the floor sends
    with pg_cluster(args.postgresql) as new_pg:
        if args.memory:
            bench_memory(
                [int(n) for n in args.memory.split(",")],
                limit=args.limit,
                conns=args.connections,
                articles=args.articles,
                new_pg=new_pg,
                sink_kind=sinks[-1],  # smtp-sink where installed: the lightest
            )
            return
        rows = []
        for size in (int(s) for s in args.sizes.split(",")):
            rows += bench_size(
                size,
                sinks,
                conns=args.connections,
                articles=args.articles,
                repeat=args.repeat,
                bounce=args.bounce_address,
                workers=tuple(int(n) for n in args.workers.split(",") if n),
                pg_url=new_pg() if new_pg else "",
            )
    by_sink: dict[str, dict[int, float]] = {}
    for row in rows:
        by_sink.setdefault(str(row["sink"]), {})[int(row["subscribers"])] = float(
            row["ours_peak_rss_mb"]  # type: ignore[arg-type]
        )
    for sink, peaks in by_sink.items():
        if len(peaks) > 1:
            small, large = min(peaks), max(peaks)
            print(
                f"{sink}: peak RSS {large} subscribers / {small} subscribers = "
                f"{peaks[large] / peaks[small]:.2f}x"
            )


if __name__ == "__main__":
    main()
