"""Bounces: apply what report mails say to the subscribers they are about.

The subscriber is found, in this order: a VERP return-path token (signed: it
names the subscriber and the digest day, or that it was their confirmation
mail), the recipient the report names (Final-Recipient, Original-Recipient,
Original-Rcpt-To) matched against the stored addresses, then the addresses
flufl.bounce found. A report whose token does not verify (forged, altered, or
for an erased subscriber) is ignored altogether. A bounce of a confirmation
mail counts toward no digest, and a hard one bounces only a pending sign-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from syndicate.bounces.mailboxes import Item
from syndicate.bounces.parse import (
    Kind,
    Report,
    ReportFormatError,
    digest_hint,
    is_confirmation,
    parse_report,
)
from syndicate.errors import SubscriberError, TokenError
from syndicate.mail import MailInfo, bounce_address
from syndicate.model import Subscriber, SubscriptionStatus
from syndicate.store import Database
from syndicate.store.bounces import ReportKind, apply_report, is_applied, last_sent_day
from syndicate.store.subscribers import get_by_email, get_by_id
from syndicate.tokens import ReturnClaim, verify_return_token

log = logging.getLogger(__name__)


@dataclass
class BounceSummary:
    """What one `syndicate bounces` run read."""

    hard: int = 0
    soft: int = 0
    complaints: int = 0
    ignored: int = 0
    unreadable: int = 0
    changed: list[str] = field(default_factory=list)  # "address: status"

    def line(self) -> str:
        complaint = "complaint" if self.complaints == 1 else "complaints"
        return (
            f"bounces: {self.hard} hard, {self.soft} soft, {self.complaints} {complaint}, "
            f"{self.ignored} ignored, {self.unreadable} unreadable"
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "hard": self.hard,
            "soft": self.soft,
            "complaints": self.complaints,
            "ignored": self.ignored,
            "unreadable": self.unreadable,
        }


class _Forged(Exception):
    pass


def _token_claim(
    db: Database, report: Report, *, secret: bytes, verp: tuple[str, str] | None
) -> ReturnClaim | None:
    """What a VERP token in the report names; raises _Forged for a bad one."""
    if verp is None:
        return None
    prefix = f"{verp[0]}+".lower()
    for address in report.return_paths:
        local, _at, domain = address.rpartition("@")
        if domain.lower() != verp[1] or not local.lower().startswith(prefix):
            continue
        token = local[len(prefix) :]
        try:
            claim = verify_return_token(secret, token, find=lambda i: get_by_id(db, i))
        except TokenError as exc:
            raise _Forged(str(exc)) from None
        return claim
    return None


def _by_address(db: Database, addresses: Iterable[str]) -> Subscriber | None:
    for address in addresses:
        try:
            found = get_by_email(db, address)
        except SubscriberError:
            continue
        if found is not None:
            return found
    return None


def _apply_one(
    db: Database,
    item: Item,
    report: Report,
    summary: BounceSummary,
    *,
    bounce_limit: int,
    secret: bytes,
    verp: tuple[str, str] | None,
    now: datetime,
) -> None:
    if report.kind is Kind.IGNORED:
        log.info("%s: ignored (%s)", item.label, report.detail)
        summary.ignored += 1
        return
    if is_applied(db, report.key):
        log.info("%s: ignored (read before)", item.label)
        summary.ignored += 1
        return
    try:
        claim = _token_claim(db, report, secret=secret, verp=verp)
    except _Forged as exc:
        log.info("%s: ignored (%s)", item.label, exc)
        summary.ignored += 1
        return
    subscriber: Subscriber | None
    day: date | None = None
    confirmation = is_confirmation(report.original_id)
    if claim is not None:
        subscriber = claim.subscriber
        # A confirmation mail's token: about no digest, whatever the report quotes.
        confirmation = claim.confirmation
        day = None if confirmation else claim.day
    elif verp is not None:
        # With mail.bounce_address set, every digest's return path carries a signed token:
        # a report without one is not about our mail (anyone can mail the bounce address
        # and name any subscriber), so it changes nothing.
        log.info("%s: ignored (no return-path token)", item.label)
        summary.ignored += 1
        return
    else:
        subscriber = _by_address(db, report.recipients)
    if subscriber is None:
        log.info("%s: ignored (%s about no subscriber)", item.label, report.kind)
        summary.ignored += 1
        return
    if day is None and not (claim is not None and confirmation):
        hint = digest_hint(report.original_id)
        if hint and hint[1] == subscriber.id:
            day = hint[0]
        elif not (
            # About a confirmation mail, which is no digest: never counted toward the limit.
            # A pending subscriber is mailed nothing else (a leaver back through the form
            # included, whose last digest it is not about).
            confirmation or subscriber.status is SubscriptionStatus.PENDING
        ):
            day = last_sent_day(db, subscriber.id)
    changed = apply_report(
        db,
        key=report.key,
        subscriber_id=subscriber.id,
        kind=ReportKind(str(report.kind)),
        day=day,
        detail=report.detail,
        bounce_limit=bounce_limit,
        now=now,
        confirmation=confirmation,
    )
    if changed is None:
        summary.ignored += 1
        return
    if report.kind is Kind.HARD:
        summary.hard += 1
    elif report.kind is Kind.SOFT:
        summary.soft += 1
    else:
        summary.complaints += 1
    if changed:
        after = get_by_id(db, subscriber.id)
        status = after.status if after else "?"
        summary.changed.append(f"{subscriber.email}: {status}")
        log.info(
            "%s: %s %s; %s is now %s",
            item.label,
            report.kind,
            report.detail,
            subscriber.email,
            status,
        )


def apply_mail(
    db: Database,
    items: Iterable[Item],
    *,
    info: MailInfo,
    bounce_limit: int,
    secret: bytes,
    now: datetime,
) -> BounceSummary:
    """Read each mail, apply the bounces and complaints it reports, and file it.

    `bounce_limit` is the send policy's (SendPolicy.bounce_limit): soft bounces over that
    many digests in a row make a subscriber `bounced`, as refusals during a send do.

    A mail that cannot be read or parsed gets one warning and is left where it
    is; every other one (applied or ignored) is filed (Maildir: moved to cur/,
    seen). Raises ConfigError when mail.bounce_address is unusable.
    """
    verp = bounce_address(info=info)
    summary = BounceSummary()
    for item in items:
        if item.raw is None:
            log.warning("%s: cannot read: %s; %s.", item.label, item.error, item.kept)
            summary.unreadable += 1
            continue
        try:
            report = parse_report(item.raw)
        except ReportFormatError as exc:
            log.warning("%s: not a readable mail: %s; %s.", item.label, exc, item.kept)
            summary.unreadable += 1
            continue
        _apply_one(
            db,
            item,
            report,
            summary,
            bounce_limit=bounce_limit,
            secret=secret,
            verp=verp,
            now=now,
        )
        if item.done is not None:
            item.done()
    return summary
