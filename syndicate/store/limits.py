"""Store: the sign-up rate limit's counts. The only code that runs SQL on `signup_counts`.

One row per client network and minute (the caller names both). Every `syndicate serve`
sharing the store counts in the same rows, so the limit holds across them. Rows leave
only when their window is over (`sweep`): no number of other networks can push a count out.
"""

from __future__ import annotations

from datetime import UTC, datetime

from syndicate.errors import StoreError
from syndicate.store import DB_ERRORS, Database, store_error

# Count one request of a network in a window; the count so far, this request included.
# An upsert, so two servers counting the same network at once both count (both engines).
_COUNT = """
    INSERT INTO signup_counts (window_at, network, count) VALUES (:window, :network, 1)
    ON CONFLICT (window_at, network) DO UPDATE SET count = signup_counts.count + 1
    RETURNING count
"""
# The network's count in the window before.
_PREVIOUS = "SELECT count FROM signup_counts WHERE window_at = :window AND network = :network"
# Drop the counts of windows that are over: a range on the key's first column.
_SWEEP = "DELETE FROM signup_counts WHERE window_at < :before"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _fail(db: Database, exc: Exception) -> StoreError:
    return store_error(db.path, "sign-up count failed", exc)


def count_request(
    db: Database,
    network: str,
    *,
    window_at: datetime,
    previous_at: datetime,
    sweep_before: datetime | None = None,
) -> tuple[int, int]:
    """Count one request of `network` in the window starting `window_at`.

    Returns (the count of the window starting `previous_at`, this window's count with this
    request). With `sweep_before`, the counts of windows starting before it go, in the same
    transaction. Raises StoreBusyError when the database stayed locked past the busy timeout.
    """
    try:
        with db.transaction() as conn:
            if sweep_before is not None:
                conn.execute(_SWEEP, {"before": _iso(sweep_before)})
            current = conn.execute(
                _COUNT, {"window": _iso(window_at), "network": network}
            ).fetchone()[0]
            row = conn.execute(
                _PREVIOUS, {"window": _iso(previous_at), "network": network}
            ).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return (int(row[0]) if row else 0), int(current)
