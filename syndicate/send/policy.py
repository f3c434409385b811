"""Send: the delivery policy (built once from the settings) and what each SMTP outcome means.

`to_action` is pure: from one delivery outcome (the stage the session reached,
the reply code and its enhanced status code) to what the ledger records. It is
the one place that decides which replies are about one recipient and which
are about the whole run.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import StrEnum

from syndicate.config import Settings
from syndicate.errors import RecipientRefusedError, TransientSendError

MAX_ATTEMPTS = 5  # runs that may try one recipient (transient failures) before it is skipped
# A run stops as a setup problem when this many recipients were refused for good and none
# accepted (not counting the address-status refusals of BOUNCE_AT_ONCE).
REFUSE_ALL_AFTER = 10
_BACKOFF_CAP = 60.0  # seconds: the longest wait between two tries of a deferred recipient

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# Replies that ask for a login: the session, not the recipient, is wrong.
_AUTH_CODES = frozenset({530, 535, 538})
# Sender address statuses (RFC 3463 X.1.7, X.1.8) and the unspecified X.1.0 are not about
# the recipient's mailbox: they count as other permanent refusals.
_NOT_ABOUT_THE_MAILBOX = frozenset({"5.1.0", "5.1.7", "5.1.8"})


class Stage(StrEnum):
    """How far the SMTP session got when the reply (or the silence) came."""

    SESSION = "session"  # connect, greeting, TLS, login
    SENDER = "sender"  # MAIL FROM
    RECIPIENT = "recipient"  # RCPT TO
    DATA = "data"  # the DATA command, or the reply after the message body


class Action(StrEnum):
    """What the ledger records for one outcome."""

    SENT = "sent"  # accepted: `sent`
    BOUNCE_NOW = "bounce-now"  # no such mailbox: `failed` for good, the subscriber `bounced`
    COUNT_BOUNCE = "count-bounce-and-fail"  # other permanent refusal: `failed` for good, +1 bounce
    DEFER = "defer"  # temporary: retried later in this run (deferred list), then by later runs
    IN_DOUBT = "in-doubt"  # the body went, no reply came: left `sending` for a later run
    RECONNECT = "reconnect"  # the server is not taking connections now: retry, then stop (75)
    SETUP_STOP = "setup-stop"  # not about one recipient: the run stops (exit 2)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One message's delivery result: the stage reached, the reply code and text.

    `code` is 0 when no reply came (connection dropped, or timed out) and -1 when what
    came was not an SMTP reply (a malformed or overlong line: aiosmtplib's
    `SMTPStatus.invalid_response`); `in_flight` is True when the message body had been
    sent by then.
    """

    stage: Stage
    code: int = 250
    reply: str = ""
    in_flight: bool = False

    @property
    def enhanced(self) -> str | None:
        """The enhanced status code (RFC 3463) at the start of the reply text, like '5.1.1'."""
        text = self.reply.split(" ", 1)[1] if self.reply[:3].isdigit() else self.reply
        found = _ENHANCED.match(text)
        return ".".join(found.groups()) if found else None


def outcome_of(error: RecipientRefusedError | TransientSendError) -> Outcome:
    """The outcome a transport's per-message error reports."""
    return Outcome(Stage(error.stage), error.code, error.reply, in_flight=error.in_flight)


def to_action(outcome: Outcome) -> Action:
    """Return what the ledger records for `outcome`. Pure: no I/O.

    Only what is not about one recipient stops a run: the session refused
    (greeting, TLS, login, a 5xx at connect) and the sender refused (`MAIL
    FROM` 5xx). A recipient refused for good is never retried; `5.1.x` and
    `5.2.1` (no such mailbox, mailbox disabled) bounce the subscriber at once. A reply
    that is not SMTP (code -1) says nothing of the recipient: it counts as no reply.
    """
    code, stage = outcome.code, outcome.stage
    if 200 <= code < 300 and stage is Stage.DATA:
        return Action.SENT
    if code in _AUTH_CODES:
        return Action.SETUP_STOP
    if stage is Stage.SESSION:
        return Action.SETUP_STOP if code >= 500 else Action.RECONNECT
    if outcome.in_flight and code <= 0:
        return Action.IN_DOUBT
    if code <= 0 or 400 <= code < 500:
        # A 421 closes the session but says nothing of the recipient: try it again later.
        return Action.DEFER
    if stage is Stage.SENDER:
        return Action.SETUP_STOP
    enhanced = outcome.enhanced
    if enhanced is not None and enhanced not in _NOT_ABOUT_THE_MAILBOX:
        if enhanced.startswith("5.1.") or enhanced == "5.2.1":
            return Action.BOUNCE_NOW
    return Action.COUNT_BOUNCE


@dataclass(frozen=True, slots=True)
class SendPolicy:
    """How a run sends; built once from the settings (`from_settings`).

    `retry_window`: seconds after the first pass during which deferred
    recipients are retried (with backoff from `retry_delay`, doubling, capped
    at a minute); `data_timeout`: seconds to wait for the reply after the
    message body (RFC 5321 4.5.3.2.6: at least 10 minutes).
    """

    connections: int = 1
    rate: float = 0.0  # messages started per second, 0 = no limit
    retry_window: float = 300.0
    retry_delay: float = 5.0
    attempts: int = 3  # tries of one connection before the server counts as unavailable
    max_attempts: int = MAX_ATTEMPTS
    bounce_limit: int = 3
    data_timeout: float = 600.0
    refuse_all_after: int = REFUSE_ALL_AFTER
    lease: float = 60.0  # seconds a worker's claim lasts unless renewed (smtp.lease)

    @classmethod
    def from_settings(cls, settings: Settings) -> SendPolicy:
        """Read every send setting once: the SMTP keys apply when mail goes over SMTP."""
        smtp = settings.smtp
        over_smtp = settings.mail.transport == "smtp"
        window = smtp.retry_window
        return cls(
            connections=smtp.connections if over_smtp else 1,
            rate=smtp.rate if over_smtp else 0.0,
            retry_window=window,
            retry_delay=min(5.0, window / 8) if window > 0 else 0.0,
            bounce_limit=settings.mail.bounce_limit,
            data_timeout=smtp.data_timeout,
            lease=smtp.lease,
        )

    def for_workers(self, workers: int) -> SendPolicy:
        """The policy of one of `workers` processes: each gets its share of the rate."""
        if workers <= 1 or not self.rate:
            return self
        return dataclasses.replace(self, rate=self.rate / workers)

    def backoff(self, tries: int) -> float:
        """Seconds to wait before try number `tries + 1` of a deferred recipient (no jitter)."""
        if tries <= 0:
            return 0.0
        return min(_BACKOFF_CAP, self.retry_delay * 2.0 ** (tries - 1))
