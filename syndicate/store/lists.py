"""Store: subscriber lists from CSV into the subscribers table, whatever tool wrote them.

Reads syndicate's own export (`email,name,language,status`) and the exports of
listmonk, Mailchimp and Substack. Each row says whether its address may be
mailed: an address that left the old list (unsubscribed, blocklisted, cleaned,
email disabled) is stored as unsubscribed or bounced, so no digest ever goes to
it, and an address already stored is never moved back to confirmed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from syndicate.errors import SubscriberError
from syndicate.i18n import LANGUAGES
from syndicate.model import SubscriptionStatus
from syndicate.store import Database
from syndicate.store.subscribers import add_subscriber, get_by_email, set_status

# Rows of a list stored in one transaction: one a row cost PostgreSQL a commit (a round trip
# and a WAL flush) each, 3,000 rows 3.9 s; a batch keeps the write lock a fraction of a
# second (sign-ups wait that long at most), and an import stopped midway leaves whole ones.
IMPORT_BATCH = 500
# A cell a spreadsheet would run as a formula: written with a leading apostrophe by
# `export`, which reading takes off again (OWASP's advice).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# syndicate's own columns, in export order.
OWN_COLUMNS = ("email", "name", "language", "status")
SHAPES_HELP = (
    "syndicate's own (email,name,language,status; only email is required), or an export "
    "of listmonk, Mailchimp or Substack"
)
_TRUE = {"true", "t", "yes", "y", "1"}
# Statuses that stop mail; an import may move a stored subscriber to them, never out.
_LEFT = (SubscriptionStatus.UNSUBSCRIBED, SubscriptionStatus.BOUNCED)
# listmonk's subscriber statuses (the list subscription status is not in its export).
_LISTMONK_STATUS = {
    "enabled": SubscriptionStatus.CONFIRMED,
    "disabled": SubscriptionStatus.UNSUBSCRIBED,
    "blocklisted": SubscriptionStatus.UNSUBSCRIBED,
}


def defuse_cell(text: str) -> str:
    """Return `text` as a CSV cell a spreadsheet shows as text (formula starts quoted)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _undefuse(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_STARTS) else text


class RowError(SubscriberError):
    """One row of a list cannot be imported: `column` names the cell at fault, if one is."""

    def __init__(self, message: str, *, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True, slots=True)
class ListRow:
    """One subscriber as a list file gives it."""

    email: str
    name: str | None
    language: str | None  # None: the list does not say (the import's default applies)
    status: SubscriptionStatus


Cells = dict[str, str]


def _language(value: str, column: str) -> str | None:
    """'vi', 'en', or their regional forms ('en-US', 'vi_VN', 'EN'); empty is None."""
    text = value.strip()
    if not text:
        return None
    base = text.replace("_", "-").split("-")[0].lower()
    if base in LANGUAGES:
        return base
    raise RowError(f"language {text!r} is not supported; expected 'vi' or 'en'.", column=column)


def _own_row(cells: Cells) -> ListRow:
    status_text = cells.get("status", "").strip().lower() or "confirmed"
    try:
        status = SubscriptionStatus(status_text)
    except ValueError:
        allowed = ", ".join(repr(str(s)) for s in SubscriptionStatus)
        raise RowError(
            f"status {status_text!r} is not one syndicate knows; expected one of {allowed}.",
            column="status",
        ) from None
    return ListRow(
        cells.get("email", ""),
        cells.get("name") or None,
        _language(cells.get("language", ""), "language"),
        status,
    )


def _listmonk_row(cells: Cells) -> ListRow:
    status_text = cells.get("status", "").strip().lower() or "enabled"
    status = _LISTMONK_STATUS.get(status_text)
    if status is None:
        raise RowError(
            f"listmonk status {status_text!r} is unknown; expected 'enabled', 'disabled' "
            "or 'blocklisted'.",
            column="status",
        )
    language = ""
    raw = cells.get("attributes", "").strip()
    if raw:
        try:
            attributes = json.loads(raw)
        except (ValueError, RecursionError):  # nested past the parser's depth: not ours
            raise RowError("attributes is not JSON.", column="attributes") from None
        if isinstance(attributes, dict):
            found = attributes.get("language", attributes.get("lang", ""))
            language = found if isinstance(found, str) else ""
    return ListRow(
        cells.get("email", ""),
        cells.get("name") or None,
        _language(language, "attributes"),
        status,
    )


def _mailchimp_row(cells: Cells) -> ListRow:
    # Mailchimp exports each audience status to its own file; the columns say which.
    if "clean_time" in cells:
        status = SubscriptionStatus.BOUNCED
    elif "unsub_time" in cells:
        status = SubscriptionStatus.UNSUBSCRIBED
    else:
        status = SubscriptionStatus.CONFIRMED
    name = " ".join(p for p in (cells.get("first name", ""), cells.get("last name", "")) if p)
    return ListRow(
        cells.get("email address", ""),
        name or None,
        _language(cells.get("language", ""), "Language"),
        status,
    )


def _substack_row(cells: Cells) -> ListRow:
    # `active_subscription` is about payment; free readers get the mail too.
    disabled = cells.get("email_disabled", "").strip().lower() in _TRUE
    return ListRow(
        cells.get("email", ""),
        cells.get("name") or None,
        None,
        SubscriptionStatus.UNSUBSCRIBED if disabled else SubscriptionStatus.CONFIRMED,
    )


@dataclass(frozen=True, slots=True)
class ListShape:
    """A kind of list file: its name and how to read a row of it."""

    name: str
    read_row: Callable[[Cells], ListRow]


def find_shape(columns: list[str]) -> ListShape | None:
    """The shape of a list whose header has `columns` (lower-cased), or None."""
    names = set(columns)
    if "email address" in names:
        return ListShape("Mailchimp", _mailchimp_row)
    if "email" not in names:
        return None
    if "uuid" in names or "attributes" in names:
        return ListShape("listmonk", _listmonk_row)
    if "active_subscription" in names or "email_disabled" in names:
        return ListShape("Substack", _substack_row)
    if names - {""} <= set(OWN_COLUMNS):
        return ListShape("syndicate", _own_row)
    return None


class ListFileError(SubscriberError):
    """A list file whose header no known shape has."""


@dataclass(frozen=True, slots=True)
class ParsedRow:
    """A row of a list file: its line, and the subscriber or why it cannot be read."""

    line: int
    row: ListRow | RowError


# What a spreadsheet may separate the cells of a "CSV" file with instead of commas: Excel
# uses the system's list separator, ';' under Vietnamese (and most European) settings.
_OTHER_DELIMITERS = (";", "\t")


def _delimiter(text: str) -> str:
    """The cell separator of a list file: a comma, unless its header is one cell that
    another separator cuts into the header of a known list."""
    first = text[: text.find("\n") + 1 or None]
    try:
        if len(next(csv.reader(io.StringIO(first, newline="")), [])) == 1:
            for other in _OTHER_DELIMITERS:
                columns = next(csv.reader(io.StringIO(first, newline=""), delimiter=other), [])
                if len(columns) > 1 and find_shape([c.strip().lower() for c in columns]):
                    return other
    except csv.Error:  # a header the csv module cannot read: read_list says so
        pass
    return ","


def read_list(text: str, *, source: str) -> tuple[ListShape, Iterator[ParsedRow]]:
    """Recognise the list in `text` by its header and return its shape and its rows.

    Cells are separated by commas, or by the ';' or tab a spreadsheet put between all of
    them (`_delimiter`).

    Raises ListFileError (naming `source`) when the header matches no known shape, or
    when the csv module cannot read some line (a cell over its size limit): that is found
    before any row is returned, so an import stores nothing from such a file.
    Blank rows are skipped; a row with more cells than the header is an error.
    """
    delimiter = _delimiter(text)
    checker = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for _ in checker:
            pass
    except csv.Error as exc:
        raise ListFileError(
            f"{source} line {checker.line_num}: not readable as CSV: {exc}.",
            hint="Fix that line (a cell may be far too long, or a quote left open), "
            "or export the list again from its tool.",
        ) from exc
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None) or []
    columns = [c.strip().lower() for c in header]
    shape = find_shape(columns)
    if shape is None:
        unknown = [c for c in header if c.strip() and c.strip().lower() not in OWN_COLUMNS]
        what = (
            f"has no email column (the header is {header!r})"
            if "email" not in columns
            else f"has columns syndicate does not know: {', '.join(map(repr, unknown))}"
        )
        raise ListFileError(
            f"{source} line 1: the header {what}; expected {SHAPES_HELP}.",
            hint="Fix the header line, or export the list again from its tool.",
        )

    def rows() -> Iterator[ParsedRow]:
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(columns):
                yield ParsedRow(
                    line,
                    RowError(f"{len(cells)} cells, but the header names {len(columns)}."),
                )
                continue
            values = {
                column: _undefuse(cell.strip())
                for column, cell in zip(columns, cells, strict=False)
            }
            try:
                yield ParsedRow(line, shape.read_row(values))
            except RowError as exc:
                yield ParsedRow(line, exc)

    return shape, rows()


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What importing one row did."""

    added: bool = False  # a new subscriber
    stopped: bool = False  # a stored subscriber the file says left: unsubscribed or bounced


def import_row(db: Database, row: ListRow, *, now: datetime, language: str = "vi") -> ImportOutcome:
    """Store one list row.

    A new address is added with the row's status and language (`language` when the row
    gives none: the site's) (confirmed, pending, unsubscribed or
    bounced; pending ones get no mail until they confirm through the sign-up form). A
    stored address is left as it is, except that a row saying it left moves a confirmed
    or pending subscriber to that status: an import never brings anyone back.
    Raises SubscriberError for a bad or erased address.
    """
    found = get_by_email(db, row.email)
    if found is None:
        add_subscriber(
            db,
            row.email,
            name=row.name,
            language=row.language or language,
            status=row.status,
            now=now,
        )
        return ImportOutcome(added=True)
    if row.status in _LEFT and found.status not in _LEFT:
        set_status(db, found.id, row.status, now=now)
        return ImportOutcome(stopped=True)
    return ImportOutcome()


@dataclass(frozen=True, slots=True)
class ImportCounts:
    """What importing a whole list did: rows added, stored ones stopped, unchanged, bad."""

    added: int = 0
    stopped: int = 0
    unchanged: int = 0
    rejected: int = 0


def import_rows(
    db: Database,
    rows: Iterable[ParsedRow],
    *,
    now: datetime,
    language: str = "vi",
    on_error: Callable[[int, SubscriberError], None],
) -> ImportCounts:
    """Store every row of a list (`import_row`), IMPORT_BATCH rows a transaction.

    A bad row (a RowError from reading it, or a SubscriberError from storing it: a bad or
    erased address) goes to `on_error` with its line, and the batch goes on: such a row
    fails before it writes anything. A store error rolls back the batch it happened in;
    the batches before it are kept, so an import stopped anywhere (killed, a store gone)
    leaves whole batches, and running it again ends where one run would have.
    """
    added = stopped = unchanged = rejected = 0
    for batch in _chunks(rows, IMPORT_BATCH):
        with db.transaction():
            for parsed in batch:
                try:
                    if isinstance(parsed.row, RowError):
                        raise parsed.row
                    outcome = import_row(db, parsed.row, now=now, language=language)
                except SubscriberError as exc:
                    rejected += 1
                    on_error(parsed.line, exc)
                    continue
                added += outcome.added
                stopped += outcome.stopped
                unchanged += not (outcome.added or outcome.stopped)
    return ImportCounts(added=added, stopped=stopped, unchanged=unchanged, rejected=rejected)


def _chunks(rows: Iterable[ParsedRow], size: int) -> Iterator[list[ParsedRow]]:
    batch: list[ParsedRow] = []
    for parsed in rows:
        batch.append(parsed)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
