"""Send: the daily job (today's digest, then the catch-up, then the report) and its preview.

Today's digest goes out on its day whatever happened to earlier ones: the
catch-up runs after it and never stops it. SIGINT and SIGTERM stop the job
gracefully (no new message starts, messages in DATA finish and are recorded);
a second SIGINT quits at once.
"""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import logging
import secrets
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from syndicate.config import Settings
from syndicate.digest import stale_warning
from syndicate.errors import (
    CrashedRunError,
    CrashedStopError,
    InterruptError,
    SyndicateError,
    TerminatedError,
)
from syndicate.load import SEEDS_HINT, check_dump_paths
from syndicate.mail import (
    MailInfo,
    MessageTemplate,
    envelope_sender,
    fill_message,
    sign_message,
    unsubscribe_url,
)
from syndicate.model import DigestPlan
from syndicate.output import check_writable_folder
from syndicate.send.catchup import OwedDigest, read_earlier_digests
from syndicate.send.deliver import (
    DigestSender,
    SendSummary,
    Stop,
    make_run_id,
    make_worker_id,
    unwatch_signals,
    watch_signals,
)
from syndicate.send.digests import (
    build_send_templates,
    check_day,
    digest_day,
    preview_digest,
    stored_digest,
    todays_digest,
    write_digest_page,
)
from syndicate.send.lock import hold_send_lock, shared_store_no_lock
from syndicate.send.policy import MAX_ATTEMPTS, SendPolicy
from syndicate.send.transports import (
    Mailer,
    check_mail_settings,
    fit_open_files,
    open_mailer,
    run_event_loop,
)
from syndicate.store import Database, ledger
from syndicate.store.bounces import complaint_warning, recent_rates
from syndicate.store.digests import close_digest
from syndicate.store.meta import get_secret
from syndicate.store.subscribers import confirmed_languages, expire_sign_ups, normalize_email
from syndicate.tokens import NONCE_BYTES, make_token

if TYPE_CHECKING:
    from syndicate.send.workers import DayJob, WorkersOutcome

# The stage's logger: records keep the name they had before send became a package.
log = logging.getLogger("syndicate.send")

Progress = Callable[[int, int], None]


def _is_loopback(url: str) -> bool:
    """Whether `url` names this machine in a reader's browser (localhost, 127.0.0.0/8, ::1,
    or 0.0.0.0 and ::, copied from `serve --host`): no reader reaches it.

    The host is read as a browser reads it (the WHATWG URL standard's host parser), not as
    `ipaddress` does: an IPv4 address may be written in 1 to 4 parts, each decimal, octal
    (a leading 0) or hex (0x), so `127.1`, `2130706433`, `0x7f.1` and `0177.0.0.1` are all
    127.0.0.1; full-width digits and dots are mapped first (IDNA)."""
    host = urlsplit(url).hostname or ""
    if ":" in host:  # a bracketed IPv6 address
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            return False
        if (mapped := address.ipv4_mapped) is not None:
            return mapped.is_loopback or mapped.is_unspecified
        return address.is_loopback or address.is_unspecified
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    host = host.lower().removesuffix(".")
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    number = _whatwg_ipv4(host)
    if number is None:
        return False
    ipv4 = ipaddress.IPv4Address(number)
    return ipv4.is_loopback or ipv4.is_unspecified


def _whatwg_ipv4(host: str) -> int | None:
    """The IPv4 address a browser reads in `host` (WHATWG URL, "IPv4 parser"), as a number;
    None when its last label is not a number (a domain name) or the address is invalid."""
    parts = host.split(".")
    if _ipv4_number(parts[-1]) is None:
        return None  # does not end in a number: a domain name
    numbers = [_ipv4_number(part) for part in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    address = values[-1]
    for index, value in enumerate(values[:-1]):
        address += value * 256 ** (3 - index)
    return address


def _ipv4_number(part: str) -> int | None:
    """One part of a browser's IPv4 address: decimal, octal after a leading 0, hex after 0x."""
    if not part.isascii():
        return None
    radix, digits = 10, part
    if part[:2] in ("0x", "0X"):
        radix, digits = 16, part[2:]
    elif len(part) > 1 and part.startswith("0"):
        radix, digits = 8, part[1:]
    if not digits:
        return 0 if radix != 10 else None
    try:
        return int(digits, radix) if digits.isalnum() else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class DailyReport:
    """What the daily job did: today's digest (None when there was nothing new) and the catch-up."""

    today: SendSummary | None
    earlier: tuple[SendSummary, ...]
    subscribers: bool = True  # some subscriber is confirmed
    # `--workers`: worker processes that died while someone is still owed (the run exits 1);
    # 0 when the others sent everyone owed (each dead one is then a warning line).
    lost_workers: int = 0
    # `--workers`: worker processes that crashed (a bug in syndicate): the run exits 1
    # whoever is owed, each one an error line.
    crashed_workers: int = 0

    @property
    def failed(self) -> bool:
        return (
            any(s.failed for s in self.earlier)
            or bool(self.today and self.today.failed)
            or bool(self.lost_workers)
            or bool(self.crashed_workers)
        )


def run_daily(
    settings: Settings,
    *,
    open_db: Callable[[], Database],
    now: datetime,
    limit: int | None = None,
    progress: Callable[[], Progress | None] = lambda: None,
    on_earlier: Callable[[SendSummary], None] = lambda summary: None,
    on_notice: Callable[[str], None] = lambda line: None,
    handle_signals: bool = True,
    workers: int = 1,
) -> DailyReport:
    """Run the daily job: build, send today's digest, then every earlier one still owed.

    On SQLite, holds the send lock throughout (LockedError, exit 75, when another
    run has it); `open_db` is called once the lock is held. On PostgreSQL any
    number of runs, here and on other machines, share the day's queue. Earlier digests go oldest
    first, after today's; each one's summary goes to `on_earlier` when it is
    done. `on_notice` gets the digest's freshness warning, for the operator's
    eyes even under `-q`. `limit` caps the recipients of the whole job, today's
    first. Raises DeliveryError (exit 2) or TempFailError (exit 75) when the
    server stops the job, and InterruptError (130) or TerminatedError (143)
    after a signal, each once every started message has finished and been
    recorded. When a `--workers` worker crashed too, the crash wins: exit 1, with
    CrashedStopError after a signal and CrashedRunError in place of any other error.

    `workers` above 1 sends through that many worker processes sharing the
    ledger (`send.workers.run_workers`); this process makes the digest and
    the messages once, holds the lock, and sums up what they did.
    """
    check_mail_settings(settings)
    # before the lock and database are made
    check_dump_paths([settings.paths.seeds], hint=SEEDS_HINT)
    check_writable_folder(settings.paths.output, name="config key paths.output")  # its pages
    # On SQLite one run at a time (the send lock); on PostgreSQL, runs on many machines share
    # the ledger's queue, and only its leases keep them apart.
    locking = shared_store_no_lock if settings.store.url else hold_send_lock
    with locking(settings.paths.database) as lock:
        db = open_db()
        if db.dialect == "sqlite":
            # The lock proves that no worker of another run is alive (each worker holds it
            # too): leases a killed run left need not be waited out.
            ledger.break_leases(db)
        # Reputation: one warning line when spam complaints pass the providers' limit.
        if (complaints := complaint_warning(recent_rates(db, now=now))) is not None:
            log.warning("%s", complaints)
        check_day(settings, db, now=now)  # before the build: a clock set back stops here
        # Sign-ups left unconfirmed past their link go, or a bot within the rate limit
        # keeps adding rows for ever.
        lapsed = expire_sign_ups(db, now=now, link_hours=settings.subscribe.confirm_hours)
        if lapsed.deleted:
            log.info("send: deleted %s sign-ups left unconfirmed past their link", lapsed.deleted)
        if lapsed.restored:
            log.info(
                "send: put back %s addresses that had left, signed up again and did not "
                "confirm in time (unsubscribed, bounced or complained, as they were)",
                lapsed.restored,
            )
        # Imported here: the build and its feed libraries are `send`'s alone, not
        # `send --dry-run`'s or `--to`'s.
        from syndicate.publish.run import run_build

        run_build(settings, db, now=now)
        plan = todays_digest(settings, db, now=now, create=True)
        if plan is not None and (stale := stale_warning(plan, tz=settings.site.tz)) is not None:
            on_notice(stale)
        languages = confirmed_languages(db)
        mail = settings.mail
        if languages and mail.transport == "smtp" and not mail.postal_address.strip():
            # Bulk-mail rules (CAN-SPAM, and the like elsewhere) want one in every message.
            log.warning(
                "config key mail.postal_address is empty, so the digest carries no postal "
                "address; set the sender's address in syndicate.toml."
            )
        if languages and mail.transport == "smtp" and _is_loopback(settings.site.base_url):
            # The embedded default (http://localhost:8000/) kept past the switch to SMTP.
            log.warning(
                "config key site.base_url is %r, this machine's own address, so the links in "
                "every digest (unsubscribe too) lead nowhere for its readers; set the address "
                "the site is served under in syndicate.toml.",
                settings.site.base_url,
            )

        def prepare(plan: DigestPlan) -> Mapping[str, MessageTemplate]:
            write_digest_page(settings, plan, now=now)
            templates = build_send_templates(settings, plan, languages, now=now)
            # Everything loaded so far (templates, Babel data, parsed articles) lives until
            # exit: keep it out of the collector's full passes during the send loop.
            gc.collect()
            gc.freeze()
            return templates

        if workers > 1:
            return _daily_workers(
                settings,
                db=db,
                now=now,
                today=plan,
                prepare=prepare,
                limit=limit,
                workers=workers,
                lock_fd=lock.fd,
                on_earlier=on_earlier,
                subscribers=bool(languages),
            )
        report = run_event_loop(
            lambda: _daily(
                db=db,
                settings=settings,
                secret=get_secret(settings, db),
                now=now,
                today=plan,
                prepare=prepare,
                load_stored=lambda day: stored_digest(db, day),
                limit=limit,
                progress=progress,
                on_earlier=on_earlier,
                handle_signals=handle_signals,
            )
        )
    return dataclasses.replace(report, subscribers=bool(languages))


async def _daily(
    *,
    db: Database,
    settings: Settings,
    secret: bytes,
    now: datetime,
    today: DigestPlan | None,
    prepare: Callable[[DigestPlan], Mapping[str, MessageTemplate]],
    load_stored: Callable[[date], DigestPlan | None],
    limit: int | None,
    progress: Callable[[], Progress | None],
    on_earlier: Callable[[SendSummary], None],
    handle_signals: bool,
) -> DailyReport:
    stop = Stop()
    policy = fit_open_files(settings, SendPolicy.from_settings(settings))
    worker = make_worker_id(make_run_id(), 1)
    mailers: list[Mailer] = []
    if handle_signals:
        watch_signals(stop, mailers)
    sent = in_flight = 0
    budget = limit

    async def deliver(plan: DigestPlan, confirmed_by: datetime | None) -> SendSummary:
        nonlocal sent, in_flight, budget
        mailer = open_mailer(settings, folder=plan.day.isoformat(), policy=policy)
        mailers[:] = [mailer]
        sender = DigestSender(
            db=db,
            mailer=mailer,
            settings=settings,
            secret=secret,
            policy=policy,
            stop=stop,
            worker=worker,
        )
        summary = await sender.send(
            templates=prepare(plan),
            day=plan.day,
            now=now,
            confirmed_by=confirmed_by,
            limit=budget,
            progress=progress(),
        )
        sent += summary.sent
        in_flight += summary.in_flight
        if budget is not None:
            budget -= summary.sent + summary.failed + summary.in_flight
        return summary

    try:
        first = await deliver(today, None) if today is not None else None
        earlier: list[SendSummary] = []
        # Earlier days after today's, oldest first: a day whose run failed, was killed or
        # was cut short by --limit is finished by a later day's run.
        for owed in read_earlier_digests(db, today=digest_day(settings, now), now=now):
            if stop.stopping or budget == 0:
                break
            plan = load_stored(owed.day)
            if plan is None:
                _close_unsendable(db, owed, now=now)
                continue
            earlier.append(await deliver(plan, owed.created_at))
            on_earlier(earlier[-1])
    finally:
        if handle_signals:
            unwatch_signals()
    if stop.signal is not None:
        raise _interrupted(stop.signal, sent=sent, in_flight=f"{in_flight:,} in flight")
    return DailyReport(today=first, earlier=tuple(earlier))


def _close_unsendable(db: Database, owed: OwedDigest, *, now: datetime) -> None:
    """An earlier digest whose articles are no longer stored: said once, and closed, so no
    later run tries it again."""
    log.warning(
        "digest %s: its articles are no longer stored, so it cannot be sent to the %d %s "
        "still owed it.",
        owed.day.isoformat(),
        owed.owed,
        "subscriber" if owed.owed == 1 else "subscribers",
    )
    close_digest(db, owed.day, now=now)


def _interrupted(
    signum: int, *, sent: int, in_flight: str, crashed: bool = False
) -> InterruptError:
    """What ends a run a signal stopped (exit 130 after SIGINT, 143 after SIGTERM): its one
    line, with what was sent and what is in flight (`in_flight`, worded). `crashed`: a
    worker of the run crashed too (a bug): exit 1, as any crash, not a clean stop's code."""
    error = TerminatedError if signum == signal.SIGTERM else InterruptError
    if crashed:
        error = CrashedStopError
    return error(f"interrupted: {sent:,} sent, {in_flight}; run `syndicate send` again to finish.")


def _daily_workers(
    settings: Settings,
    *,
    db: Database,
    now: datetime,
    today: DigestPlan | None,
    prepare: Callable[[DigestPlan], Mapping[str, MessageTemplate]],
    limit: int | None,
    workers: int,
    lock_fd: int,
    on_earlier: Callable[[SendSummary], None],
    subscribers: bool,
) -> DailyReport:
    """The daily job's sending over `workers` processes: every digest owed, made here once."""
    from syndicate.send.workers import fit_workers, run_workers  # `--workers` alone needs them

    # Raised here, the open-files limit is the workers' too; too low, it is said here once:
    # for this process's pipes to the workers, then for each worker's connections.
    workers = fit_workers(workers)
    fit_open_files(settings, SendPolicy.from_settings(settings), workers=workers)
    days: list[DayJob] = []
    if today is not None:
        days.append(_day_job(db, today.day, None, prepare(today)))
    for owed in read_earlier_digests(db, today=digest_day(settings, now), now=now):
        stored = stored_digest(db, owed.day)
        if stored is None:
            _close_unsendable(db, owed, now=now)
            continue
        days.append(_day_job(db, owed.day, owed.created_at, prepare(stored)))
    secret = get_secret(settings, db)
    outcome = run_workers(
        settings,
        days=days,
        secret=secret,
        now=now,
        workers=workers,
        limit=limit,
        lock_fd=lock_fd,
    )
    if limit is not None:
        run = outcome.run
        outcome = _spend_lost_shares(
            db,
            days=days,
            outcome=outcome,
            limit=limit,
            again=lambda budget, first: run_workers(
                settings,
                days=days,
                secret=secret,
                now=now,
                workers=workers,
                limit=budget,
                lock_fd=lock_fd,
                run=run,
                first=first,
            ),
            workers=workers,
        )
    counts = ledger.run_counts(db, days=[job.day for job in days], run=outcome.run)
    summaries = _counted(days=days, counts=counts, outcome=outcome)
    # Workers killed, crashed or stopped: the run's exit follows the ledger, as the others
    # may have sent everyone meanwhile.
    left = _left_owed(db, days=days, outcome=outcome, summaries=summaries, limit=limit)
    _lost_workers(outcome, left=left)
    # A worker's store error first, as one process says it over a stop: the rows its worker
    # could not record or give back are no dead worker's, as the interrupt line would say.
    if outcome.error is not None:
        raise _crash_wins(outcome.error, outcome)
    if outcome.signal is not None:
        sent = sum(s.sent for s in summaries)
        raise _interrupted(
            outcome.signal,
            sent=sent,
            in_flight=_in_flight(counts, outcome),
            crashed=any(lost.crash for lost in outcome.lost),
        )
    if outcome.stopped_by:
        _stopped_workers(outcome, left=left)
    first = summaries.pop(0) if today is not None and summaries else None
    for summary in summaries:
        on_earlier(summary)
    return DailyReport(
        today=first,
        earlier=tuple(summaries),
        subscribers=subscribers,
        lost_workers=sum(1 for lost in outcome.lost if not lost.crash) if left else 0,
        crashed_workers=sum(1 for lost in outcome.lost if lost.crash),
    )


def _spend_lost_shares(
    db: Database,
    *,
    days: list[DayJob],
    outcome: WorkersOutcome,
    limit: int,
    again: Callable[[int, int], WorkersOutcome],
    workers: int,
) -> WorkersOutcome:
    """`--limit` with a worker killed: what it left of its share goes to the run's next round.

    Each worker gets its share of the limit; one killed before it used its share left the
    rest unused (the others stop at their own), and the run sent fewer than the limit. Once
    all have ended, a new round of workers of the same run (`again(budget, first number)`:
    numbered on, so no row the run gave up on is taken again) shares what the ledger says
    is left of the limit: the rows the run sent, failed or left in doubt count; those a
    killed worker still held do not (the new round takes them over, and counts them as it
    sends them), nor those it had parked (given back to the new round, with no attempt
    used: `ledger.unpark_run`). Rounds go on while a worker was killed (none crashed: a bug
    ends the run as it is), someone is owed within the limit, and the last round got
    somewhere; a stop, a store error or a server that turned a worker away ends them."""
    run, run_days = outcome.run, [job.day for job in days]
    rounds, last = 1, outcome

    def used() -> int:
        counts = ledger.run_counts(db, days=run_days, run=run)
        return sum(c.sent + c.failed + c.in_doubt for c in counts)

    done = used()
    while (
        last.lost
        and not any(lost.crash for lost in last.lost)
        and last.signal is None
        and last.error is None
        and not last.stopped_by
        and done < limit
        and any(
            ledger.count_owed(
                db, day=job.day, max_attempts=MAX_ATTEMPTS, confirmed_by=job.confirmed_by
            )
            for job in days
        )
    ):
        log.info(
            "send: a worker was killed with %d of --limit %d unused by the run; %d more "
            "workers share it.",
            limit - done,
            limit,
            workers,
        )
        # What a killed worker parked (deferred past the retry window: never in flight) is
        # kept from every worker of the run, this round's too: given back, it is the round's
        # to send within the limit, as the rows it held under its lease are.
        ledger.unpark_run(db, days=run_days, run=run)
        last = again(limit - done, 1 + rounds * workers)
        outcome = _joined(outcome, last)
        rounds += 1
        now_done = used()
        if now_done == done:  # nothing more sent, failed or left in doubt: no use going on
            break
        done = now_done
    return outcome


def _joined(first: WorkersOutcome, then: WorkersOutcome) -> WorkersOutcome:
    """Two rounds of workers of one run as one outcome: their reports per digest summed (the
    counts are the ledger's anyway), the later round's signal, the first error."""
    summaries: list[SendSummary] = []
    for index in range(max(len(first.summaries), len(then.summaries))):
        parts = [o.summaries[index] for o in (first, then) if index < len(o.summaries)]
        summaries.append(
            SendSummary(
                digest=parts[0].digest,
                sent=sum(p.sent for p in parts),
                failed=sum(p.failed for p in parts),
                skipped=parts[0].skipped,
                seconds=sum(p.seconds for p in parts),
                bounced=sum(p.bounced for p in parts),
                in_flight=sum(p.in_flight for p in parts),
            )
        )
    from syndicate.send.workers import WorkersOutcome

    return WorkersOutcome(
        run=first.run,
        summaries=tuple(summaries),
        lost=first.lost + then.lost,
        stopped_by=first.stopped_by + then.stopped_by,
        signal=then.signal,
        error=first.error or then.error,
        seconds=first.seconds + then.seconds,
    )


def _in_flight(counts: list[ledger.RunCounts], outcome: WorkersOutcome) -> str:
    """The interrupt line's messages in flight, the ledger's as the other counts: left in
    doubt, as one process counts them; then the rows a worker that died still held (the
    workers' reports leave them out), which the ledger cannot tell its messages in flight
    from (at most `smtp.connections` each), said apart."""
    in_flight = f"{sum(c.in_doubt for c in counts):,} in flight"
    held = sum(c.held for c in counts)
    if not held:
        return in_flight
    dead = "a dead worker, its" if len(outcome.lost) == 1 else "dead workers, their"
    return f"{in_flight}, {held:,} held by {dead} messages in flight among them"


def _counted(
    *, days: list[DayJob], counts: list[ledger.RunCounts], outcome: WorkersOutcome
) -> list[SendSummary]:
    """The run's summary of each digest the workers got to, its counts the ledger's
    (`counts`, one a digest of `days`): what every worker of the run sent, failed and
    bounced, a killed one's too (the workers' reports leave out those of a worker killed
    before it reported). The time is the reports' (the whole run's for a digest no worker
    reported), messages in flight theirs (what --limit's share counts as used)."""
    summaries: list[SendSummary] = []
    for index, (job, count) in enumerate(zip(days, counts, strict=True)):
        reported = outcome.summaries[index] if index < len(outcome.summaries) else None
        if index and reported is None and not count.sent and not count.failed:
            break  # no worker got to it (--limit, a stop); the first is said even so
        summaries.append(
            SendSummary(
                digest=job.day.isoformat(),
                sent=count.sent,
                failed=count.failed,
                skipped=job.skipped,
                seconds=reported.seconds if reported is not None else outcome.seconds,
                bounced=count.bounced,
                in_flight=reported.in_flight if reported is not None else 0,
            )
        )
    return summaries


def _left_owed(
    db: Database,
    *,
    days: list[DayJob],
    outcome: WorkersOutcome,
    summaries: list[SendSummary],
    limit: int | None,
) -> int:
    """How many the ledger still owes one of `days` after the workers (within --limit);
    0 without a lost or stopped worker (not asked)."""
    if not outcome.lost and not outcome.stopped_by:
        return 0
    left = sum(
        ledger.count_owed(db, day=job.day, max_attempts=MAX_ATTEMPTS, confirmed_by=job.confirmed_by)
        for job in days
    )
    if limit is not None:
        started = sum(s.sent + s.failed + s.in_flight for s in summaries)
        left = min(left, max(0, limit - started))
    return left


def _lost_workers(outcome: WorkersOutcome, *, left: int) -> None:
    """A line per worker that died. A crash (a bug in syndicate): an error whoever is owed,
    and the run exits 1. A kill, with anyone still owed: an error, and the run exits 1. With
    no one: the others took its recipients over and sent them; a warning, and the run's exit
    is the others' (a killed worker's messages in flight may have gone twice)."""
    for lost in outcome.lost:
        if lost.crash:
            what = (
                "Some recipients are still owed: run `syndicate send` again to finish."
                if left
                else "The other workers sent everyone owed."
            )
            log.error(
                "send worker %d (pid %d) %s, a bug in syndicate: its traceback is above, on "
                "stderr. %s Please report the bug with that traceback.",
                lost.number,
                lost.pid,
                lost.how,
                what,
            )
        elif left:
            log.error(
                "send worker %d (pid %d) %s before it finished; the other workers take over "
                "what it held once its lease runs out (its messages in flight may go twice). "
                "Run `syndicate send` again to finish anything left.",
                lost.number,
                lost.pid,
                lost.how,
            )
        else:
            log.warning(
                "send worker %d (pid %d) %s before it finished; the other workers sent everyone "
                "owed (its messages in flight may have gone twice).",
                lost.number,
                lost.pid,
                lost.how,
            )


def _crash_wins(error: SyndicateError, outcome: WorkersOutcome) -> SyndicateError:
    """The error that ends the run (a store error, the mail server stopping it: 75 or 2); exit
    1 with its line (`CrashedRunError`) when a worker crashed too. A crash wins over every
    other ending (a stop too: `_interrupted`), as in one process, where the bug is raised
    before the run's error: exit 1 says a bug, which a cron wrapper retrying on 75 must not
    retry, and the crash's own `error:` line is printed above."""
    if not any(lost.crash for lost in outcome.lost):
        return error
    crashed = CrashedRunError(error.message, hint=error.hint)
    crashed.__cause__ = error
    return crashed


def _stopped_workers(outcome: WorkersOutcome, *, left: int) -> None:
    """Some workers stopped for the server (no connection, sessions refused): the run's exit
    follows the ledger. Anyone still owed (within --limit): the first worker's error stops
    the run (75, or 2 for a setup problem; 1 when a worker crashed too). No one: the other
    workers sent everyone, and each stop is one warning line, with what stopped the worker
    and not its own count so far (the others sent everyone: the server takes fewer
    connections than the workers asked for)."""
    if left:
        raise _crash_wins(outcome.stopped_by[0][1], outcome)
    for number, error in outcome.stopped_by:
        log.warning(
            "send worker %d stopped: %s; the other workers sent everyone owed. Lower --workers "
            "or smtp.connections to what the server takes.",
            number,
            (error.cause or error.message).rstrip("."),
        )


def _day_job(
    db: Database,
    day: date,
    confirmed_by: datetime | None,
    templates: Mapping[str, MessageTemplate],
) -> DayJob:
    skipped = ledger.count_skipped(
        db, day=day, max_attempts=MAX_ATTEMPTS, confirmed_by=confirmed_by
    )
    from syndicate.send.workers import DayJob

    return DayJob(day=day, confirmed_by=confirmed_by, templates=dict(templates), skipped=skipped)


@dataclass(frozen=True, slots=True)
class Preview:
    """What `send --dry-run` counts, or the address a `send --to` test copy went to."""

    digest: str
    articles: int
    would_send: int = 0
    skipped: int = 0
    message_bytes: Mapping[str, int] = field(default_factory=dict)
    test_copy: str | None = None
    address: str | None = None  # the --to address, normalised (with --dry-run: not sent to)


def preview(
    settings: Settings,
    *,
    open_db: Callable[[], Database],
    now: datetime,
    to: str | None,
    dry_run: bool,
    limit: int | None = None,
) -> Preview | None:
    """`send --dry-run` and `send --to`: count today's digest's recipients, or send a test copy.

    Takes no lock, stores no digest and writes no ledger row (a test copy goes
    through the configured transport, not recorded). Returns None when there is
    no digest to send.
    """
    check_mail_settings(settings)
    # before the database is made
    check_dump_paths([settings.paths.seeds], hint=SEEDS_HINT)
    address = normalize_email(to) if to is not None else None  # and a typo in --to
    db = open_db()
    check_day(settings, db, now=now)  # `send` would stop there: no digest of a day gone by
    # Read the seeds as `send` would; no write lock is held while the digest is planned.
    plan = preview_digest(settings, db, now=now)
    if plan is None:
        return None
    templates = build_send_templates(settings, plan, confirmed_languages(db), now=now)
    test_copy = address is not None and not dry_run
    shown = _preview_plan(
        db=db,
        settings=settings,
        plan=plan,
        templates=templates,
        # The secret is made (once) and kept: a test copy's link must verify. A dry run
        # needs none, so it never waits for the write lock to store one.
        secret=get_secret(settings, db) if test_copy else b"",
        now=now,
        test_copy_to=address if test_copy else None,
        limit=limit,
    )
    return dataclasses.replace(shown, address=address)


def _preview_plan(
    *,
    db: Database,
    settings: Settings,
    plan: DigestPlan,
    templates: Mapping[str, MessageTemplate],
    secret: bytes,
    now: datetime,
    test_copy_to: str | None = None,
    limit: int | None = None,
) -> Preview:
    """Count today's digest's recipients (no lock, no ledger row), or send one test copy.

    A test copy is not recorded: it goes to `test_copy_to` through the
    configured transport (the outbox folder `test/`), with a Message-ID of its own.
    """
    day = plan.day.isoformat()
    if test_copy_to is not None:
        template = templates[settings.site.language]
        mail_info = MailInfo.from_settings(settings)
        # Subscriber 0 never exists, so the copy's link acts on nobody.
        token = make_token(
            secret,
            purpose="unsubscribe",
            subscriber_id=0,
            nonce=secrets.token_bytes(NONCE_BYTES),
            issued_at=now,
        )
        message = _test_copy(
            template, to=test_copy_to, day=plan.day, url=unsubscribe_url(token, info=mail_info)
        )

        async def deliver() -> None:
            mailer = open_mailer(settings, folder="test")
            try:
                await mailer.send(envelope_sender(info=mail_info), [test_copy_to], message)
            finally:
                await mailer.aclose()

        run_event_loop(deliver)
        return Preview(digest=day, articles=len(plan.articles), test_copy=test_copy_to)
    owed = ledger.count_owed(db, day=plan.day, max_attempts=MAX_ATTEMPTS)
    return Preview(
        digest=day,
        articles=len(plan.articles),
        would_send=min(owed, limit) if limit is not None else owed,
        skipped=ledger.count_skipped(db, day=plan.day, max_attempts=MAX_ATTEMPTS),
        message_bytes={lang: sum(len(c) for c in t.chunks) for lang, t in templates.items()},
    )


def _test_copy(template: MessageTemplate, *, to: str, day: date, url: str) -> bytes:
    """One test copy, with a Message-ID of its own (`<day.test-RANDOM.KEY@domain>`).

    Subscribers' Message-IDs are deterministic (`<day.id.KEY@domain>`); test copies
    are not recorded, so each gets a random one: two copies must not look like
    one message to a mail client or to the outbox folder.
    """
    message = fill_message(
        dataclasses.replace(template, dkim=None), to=to, subscriber_id=0, unsubscribe_url=url
    )
    prefix = f"\r\nMessage-ID: <{day.isoformat()}.".encode("ascii")
    unique = prefix + f"test-{secrets.token_hex(8)}".encode("ascii")
    head_end = message.index(b"\r\n\r\n")
    for slot in (prefix + b"0.", prefix + b"0@"):  # with the digest's key, or without
        if message.find(slot, 0, head_end) >= 0:
            message = message.replace(slot, unique + slot[-1:], 1)
            break
    else:  # pragma: no cover - mail.py puts it after To
        raise AssertionError("the digest template has no Message-ID after To")
    if template.dkim is not None:  # sign what goes out, with its final Message-ID
        message = sign_message(message, template.dkim)
    return message
