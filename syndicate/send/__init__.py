"""Send stage: deliver one digest to every confirmed subscriber owed it. The only SMTP code.

`send_digest` takes recipients from the ledger's work queue in batches, each
claimed under a lease (committed, `sending`) before its messages go, and records
`sent` right after the server accepts each one, so a crash can leave only
messages in flight in doubt: delivery is at-least-once. `read_earlier_digests` finds the digests of
earlier days (within CATCH_UP_DAYS) still owed to someone, so a day whose run
failed or was cut short is finished by the next day's run, after that day's own. Transports are
`Mailer`s: `OutboxMailer` writes .eml files, `SmtpMailer` keeps a pool of
persistent aiosmtplib connections.

Modules: `transports` (the Mailers and what opens them), `policy` (the frozen
SendPolicy and the pure map from an SMTP outcome to a ledger action), `deliver`
(the send loop, `DigestSender`), `lock` (one run at a time), `catchup` (earlier
digests still owed), `digests` (which digest goes out, its page and messages),
`daily` (the daily job: today's digest, then the catch-up; its previews), `workers`
(`send --workers N`: the worker processes sharing the queue).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import syndicate

if TYPE_CHECKING:
    from syndicate.errors import RecipientRefusedError, TransientSendError
    from syndicate.send.catchup import CATCH_UP_DAYS, OwedDigest, read_earlier_digests
    from syndicate.send.deliver import PAGE_SIZE, DigestSender, SendSummary, Stop, send_digest
    from syndicate.send.lock import open_send_lock
    from syndicate.send.policy import (
        MAX_ATTEMPTS,
        REFUSE_ALL_AFTER,
        Action,
        Outcome,
        SendPolicy,
        Stage,
        outcome_of,
        to_action,
    )
    from syndicate.send.transports import (
        Mailer,
        OutboxMailer,
        SmtpMailer,
        SmtpServer,
        forget_recipient,
        open_files_limit,
        open_mailer,
        read_dkim_key,
    )

# Each name, and the module that defines it, loaded when first used: a command that needs
# one part (`bounces` the policy, `subscribers erase` the outbox) loads that module only,
# not the send loop, the store's queue and the SMTP stack.
_HOME = {
    "RecipientRefusedError": "syndicate.errors",
    "TransientSendError": "syndicate.errors",
    "CATCH_UP_DAYS": "syndicate.send.catchup",
    "OwedDigest": "syndicate.send.catchup",
    "read_earlier_digests": "syndicate.send.catchup",
    "PAGE_SIZE": "syndicate.send.deliver",
    "DigestSender": "syndicate.send.deliver",
    "SendSummary": "syndicate.send.deliver",
    "Stop": "syndicate.send.deliver",
    "send_digest": "syndicate.send.deliver",
    "open_send_lock": "syndicate.send.lock",
    "MAX_ATTEMPTS": "syndicate.send.policy",
    "REFUSE_ALL_AFTER": "syndicate.send.policy",
    "Action": "syndicate.send.policy",
    "Outcome": "syndicate.send.policy",
    "SendPolicy": "syndicate.send.policy",
    "Stage": "syndicate.send.policy",
    "outcome_of": "syndicate.send.policy",
    "to_action": "syndicate.send.policy",
    "Mailer": "syndicate.send.transports",
    "OutboxMailer": "syndicate.send.transports",
    "SmtpMailer": "syndicate.send.transports",
    "SmtpServer": "syndicate.send.transports",
    "forget_recipient": "syndicate.send.transports",
    "open_files_limit": "syndicate.send.transports",
    "open_mailer": "syndicate.send.transports",
    "read_dkim_key": "syndicate.send.transports",
}

__getattr__ = syndicate.lazy_attributes(globals(), _HOME)


__all__ = [
    "CATCH_UP_DAYS",
    "MAX_ATTEMPTS",
    "PAGE_SIZE",
    "REFUSE_ALL_AFTER",
    "Action",
    "DigestSender",
    "Mailer",
    "OutboxMailer",
    "Outcome",
    "OwedDigest",
    "RecipientRefusedError",
    "SendPolicy",
    "SendSummary",
    "SmtpMailer",
    "SmtpServer",
    "Stage",
    "Stop",
    "TransientSendError",
    "forget_recipient",
    "open_files_limit",
    "open_mailer",
    "open_send_lock",
    "outcome_of",
    "read_dkim_key",
    "read_earlier_digests",
    "send_digest",
    "to_action",
]
