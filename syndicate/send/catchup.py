"""Send: the catch-up of earlier digests, which spans runs.

`read_earlier_digests` finds the digests of earlier days (within CATCH_UP_DAYS)
still owed to someone, so a day whose run failed or was cut short is finished by
the next day's run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from syndicate.send.policy import MAX_ATTEMPTS
from syndicate.store import Database, digests, ledger

# The stage's logger: records keep the name they had before send became a package.
log = logging.getLogger("syndicate.send")

# A digest still owed to someone is caught up by the runs of this many following days;
# after that it is given up (with a warning), so old news does not go out a month late.
CATCH_UP_DAYS = 7


@dataclass(frozen=True, slots=True)
class OwedDigest:
    """An earlier day's digest that some subscribers are still owed."""

    day: date
    created_at: datetime  # subscribers confirmed later are not owed it
    owed: int


def read_earlier_digests(
    db: Database, *, today: date, now: datetime, window_days: int = CATCH_UP_DAYS
) -> list[OwedDigest]:
    """Return the digests of days before `today` still owed to someone, oldest first.

    Owed means: a subscriber confirmed when the digest was created, confirmed
    still, whose ledger row is missing, left `sending`, or `failed` with
    attempts to spare. Digests owed to nobody are closed, and so are those
    older than `window_days` (given up, with a warning naming how many never
    got it), so each digest is looked at by a few runs only.
    """
    first = today - timedelta(days=window_days)
    found: list[OwedDigest] = []
    for stored in digests.open_digests(db, before=today):
        owed = ledger.count_owed(
            db, day=stored.day, max_attempts=MAX_ATTEMPTS, confirmed_by=stored.created_at
        )
        if owed and stored.day >= first:
            found.append(OwedDigest(stored.day, stored.created_at, owed))
            continue
        if owed:
            log.warning(
                "digest %s: given up with %d %s never sent it: it is older than the "
                "%d-day catch-up window.",
                stored.day.isoformat(),
                owed,
                "subscriber" if owed == 1 else "subscribers",
                window_days,
            )
        digests.close_digest(db, stored.day, now=now)
    return found
