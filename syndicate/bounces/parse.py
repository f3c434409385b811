"""Bounces: one report mail's bytes in, what it reports out. Pure: no I/O.

Recognised, in this order: RFC 5965 feedback reports (ARF; Feedback-Type
abuse is a complaint), RFC 3464 delivery status notifications (a 5.x.x status
is a hard bounce, 4.x.x a soft one; delivered/relayed/expanded are no bounce),
RFC 3834 auto-replies (ignored), then flufl.bounce's detectors for the
non-standard bounces of qmail, Exchange, Yahoo and others.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from email import message_from_bytes, policy
from email.message import Message
from email.policy import Policy
from email.utils import getaddresses
from enum import StrEnum


class Kind(StrEnum):
    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"
    IGNORED = "ignored"


class ReportFormatError(ValueError):
    """The bytes are not a mail message at all."""


@dataclass(frozen=True, slots=True)
class Report:
    """What one mail reports: its kind, who it may be about, and the key it is stored under."""

    # "mid:<Message-ID>" ("mid-sha256:<hex>" for one over _KEY_ID_CHARS), else
    # "sha256:<hex of the bytes>"
    key: str
    kind: Kind
    detail: str  # DSN status, feedback type, or why it was ignored
    # Addresses that may be our VERP return path (envelope To, the original's Return-Path).
    return_paths: tuple[str, ...] = ()
    # Addresses the report names as the failed or complaining recipient, best first.
    recipients: tuple[str, ...] = ()
    # The original message's Message-ID, when the report carries it (a day hint).
    original_id: str = ""
    standard: bool = True  # a DSN or ARF report, not a heuristic match


# A report has a dozen MIME parts (the notice, the status fields, the returned message and
# its own few); each part costs a Message object and a visit in every walk below, so a mail
# of 10 MiB of empty parts took minutes and 680 MB. Past this many it is not read on.
MAX_PARTS = 1000
# flufl.bounce's detectors go over every body line once per pattern set (about 50), and some
# of their patterns take time quadratic in a line's length once a notice line matched. Every
# bounce puts its notice at the top, so they are shown only the mail's first lines, each cut
# to SMTP's 998 bytes.
HEURISTIC_BYTES = 64 * 1024
HEURISTIC_LINES = 2000
_LINE_BYTES = 998
TOO_MANY_PARTS = f"it has over {MAX_PARTS} MIME parts, more than a bounce or complaint report holds"
# The parser keeps each line as an object of its own: 10 MiB of two-byte lines took 450 MB.
# A report is far under this many, even one returning a 10 MiB message in base64 (135,000).
MAX_LINES = 200_000
TOO_MANY_LINES = f"it has over {MAX_LINES} lines, more than a bounce or complaint report holds"
# A Message-ID longer than this is keyed by its hash: anyone can mail the bounce address,
# and PostgreSQL's index holds no key over 2704 bytes (a real Message-ID is under 250).
_KEY_ID_CHARS = 500
_STATUS = re.compile(r"([245])\.\d{1,3}\.\d{1,3}")
_SMTP_CODE = re.compile(r"(?:^|;)\s*([245])\d\d\b")
# A digest's Message-ID: '<DAY.ID.KEY@domain>' (KEY: the digest's digests.message_key, hex),
# or '<DAY.ID@domain>' as digests were sent before (their bounces come back for days).
_DIGEST_ID = re.compile(r"<?(\d{4}-\d{2}-\d{2})\.(\d+)(?:\.[0-9a-f]{1,32})?@[^>]*>?")
# A confirmation mail's Message-ID: '<confirm.TAG@domain>' (mail.build_confirmation_message).
_CONFIRMATION_ID = re.compile(r"<?confirm\.[0-9a-f]{1,64}@[^>]*>?")
# Where the envelope recipient of the report (our return path) may be recorded.
_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response)|out of (the )?office|vacation|abwesenheit|"
    r"absence|trả lời tự động)",
    re.IGNORECASE,
)


def _key(msg: Message, raw: bytes) -> str:
    message_id = " ".join(str(msg.get("Message-ID", "")).split())
    if len(message_id) > _KEY_ID_CHARS:
        return "mid-sha256:" + hashlib.sha256(message_id.encode("utf-8", "replace")).hexdigest()
    if message_id:
        return f"mid:{message_id}"
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _addresses(values: Iterable[str]) -> list[str]:
    found = []
    for _name, address in getaddresses([str(v) for v in values]):
        address = address.strip()
        if "@" in address:
            found.append(address)
    return found


def _typed_address(value: str) -> str:
    """The address of a DSN/ARF address field ('rfc822; an@example.org')."""
    kind, sep, rest = value.partition(";")
    text = rest if sep else kind
    text = text.strip().strip("<>").strip()
    return text if "@" in text else ""


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    text = part.get_payload(decode=True)
    if isinstance(text, bytes):
        blocks = re.split(rb"\r?\n\s*\r?\n", text.strip())
        return [message_from_bytes(block + b"\n\n", policy=policy.compat32) for block in blocks]
    return []


def _original(msg: Message) -> Message | None:
    """The returned original message (or its headers) inside a report."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if kind in ("text/rfc822-headers", "text/global-headers"):
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                return message_from_bytes(body.lstrip() + b"\n\n", policy=policy.compat32)
    return None


def _report_part(msg: Message, content_type: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _return_paths(msg: Message, original: Message | None, extra: Iterable[str] = ()) -> list[str]:
    values = [v for name in _ENVELOPE_HEADERS for v in msg.get_all(name, [])]
    if original is not None:
        values += original.get_all("Return-Path", [])
    return list(dict.fromkeys(_addresses([*values, *extra])))


def _dsn_kind(block: Message) -> tuple[Kind, str] | None:
    action = str(block.get("Action", "")).strip().lower()
    status = _STATUS.search(str(block.get("Status", "")))
    code = status.group(0) if status else ""
    if action in ("delivered", "relayed", "expanded"):
        return None
    if not code:
        smtp = _SMTP_CODE.search(str(block.get("Diagnostic-Code", "")))
        code = f"{smtp.group(1)}.0.0" if smtp else ""
    if not action and not code:
        return None
    if code.startswith("2"):
        return None
    if code.startswith("4") or (action == "delayed" and not code.startswith("5")):
        return Kind.SOFT, code or "4.0.0"
    return Kind.HARD, code or "5.0.0"


def _is_auto_reply(msg: Message) -> bool:
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto and auto != "no":
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond"):
        return True
    precedence = str(msg.get("Precedence", "")).strip().lower()
    if precedence == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT.match(str(msg.get("Subject", ""))))


# flufl.bounce logs a detector that trips (a mail with no From is enough) with its
# traceback before raising, and has no handler of its own: logging's last-resort handler
# printed that traceback on stderr. What it raises is ignored below; so is its log.
logging.getLogger("flufl.bounce").addHandler(logging.NullHandler())


class _TooManyPartsError(Exception):
    pass


def _parse(raw: bytes) -> Message:
    """The mail's Message (compat32); raises _TooManyPartsError past MAX_PARTS parts."""
    made = 0

    def factory(policy: Policy = policy.compat32) -> Message:
        nonlocal made
        made += 1
        if made > MAX_PARTS + 1:  # the parser makes one more, to see what it accepts
            raise _TooManyPartsError
        return Message(policy)

    return message_from_bytes(raw, factory, policy=policy.compat32)


def _head(raw: bytes) -> bytes:
    """The first HEURISTIC_LINES lines of at most HEURISTIC_BYTES, each cut to _LINE_BYTES."""
    lines = raw[:HEURISTIC_BYTES].splitlines(keepends=True)[:HEURISTIC_LINES]
    return b"".join(
        line if len(line) <= _LINE_BYTES else line[:_LINE_BYTES] + b"\n" for line in lines
    )


def _flufl(raw: bytes) -> tuple[set[str], set[str]]:
    # Imported when a mail gets this far (no token, no DSN): most of what a pipe
    # transport hands over never needs its detectors.
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(_parse(_head(raw)))
    except Exception:  # heuristic detectors may trip on any odd mail
        return set(), set()

    def text(items: Iterable[bytes | str]) -> set[str]:
        return {i.decode("ascii", "replace") if isinstance(i, bytes) else str(i) for i in items}

    return text(temporary), text(permanent)


def parse_report(raw: bytes) -> Report:
    """Return what one mail reports. Raises ReportFormatError when it is no mail at all."""
    if not raw.strip():
        raise ReportFormatError("the message is empty")
    # Lines as the parser splits them: at LF, CR LF and a lone CR.
    if raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n") > MAX_LINES:
        raise ReportFormatError(TOO_MANY_LINES)
    try:
        msg = _parse(raw)
    except _TooManyPartsError:
        raise ReportFormatError(TOO_MANY_PARTS) from None
    except Exception as exc:  # the parser is lenient: anything raised means broken bytes
        raise ReportFormatError(f"the message cannot be parsed: {exc}") from exc
    if not msg.keys() or not any(
        msg.get(h) for h in ("From", "To", "Subject", "Date", "Message-ID", "Content-Type")
    ):
        raise ReportFormatError("the message has no mail headers")
    key = _key(msg, raw)
    original = _original(msg)
    original_id = " ".join(str(original.get("Message-ID", "")).split()) if original else ""
    report_type = str(msg.get_param("report-type", "", header="Content-Type")).lower()
    is_report = msg.get_content_type() == "multipart/report"

    feedback = _report_part(msg, "message/feedback-report")
    if feedback is not None or (is_report and report_type == "feedback-report"):
        fields = _merged(_field_blocks(feedback) if feedback is not None else [])
        feedback_type = str(fields.get("Feedback-Type", "")).strip().lower()
        recipients = [_typed_address(v) for v in fields.get_all("Original-Rcpt-To", [])]
        if original is not None:
            recipients += _addresses(original.get_all("To", []))
        return_paths = _return_paths(
            msg,
            original,
            [_typed_address(v) for v in fields.get_all("Original-Mail-From", [])],
        )
        kind = Kind.COMPLAINT if feedback_type == "abuse" else Kind.IGNORED
        detail = f"feedback {feedback_type or 'unknown'}"
        return Report(
            key,
            kind,
            detail,
            tuple(return_paths),
            tuple(dict.fromkeys(r for r in recipients if r)),
            original_id,
        )

    status = _report_part(msg, "message/delivery-status") or _report_part(
        msg, "message/global-delivery-status"
    )
    if status is not None:
        blocks = _field_blocks(status)
        worst: tuple[Kind, str] | None = None
        recipients = []
        for block in blocks[1:] if len(blocks) > 1 else blocks:
            found = _dsn_kind(block)
            if found is None:
                continue
            for name in ("Original-Recipient", "Final-Recipient"):
                address = _typed_address(str(block.get(name, "")))
                if address:
                    recipients.append(address)
            if worst is None or (found[0] is Kind.HARD and worst[0] is not Kind.HARD):
                worst = found
        if original is not None:
            recipients += _addresses(original.get_all("To", []))
        if worst is None:
            return Report(key, Kind.IGNORED, "delivery status without a failure")
        return Report(
            key,
            worst[0],
            worst[1],
            tuple(_return_paths(msg, original)),
            tuple(dict.fromkeys(recipients)),
            original_id,
        )

    if _is_auto_reply(msg):
        return Report(key, Kind.IGNORED, "auto-reply")
    temporary, permanent = _flufl(raw)
    if permanent or temporary:
        kind = Kind.HARD if permanent else Kind.SOFT
        return Report(
            key,
            kind,
            "non-standard bounce",
            tuple(_return_paths(msg, original)),
            tuple(sorted(permanent or temporary)),
            original_id,
            standard=False,
        )
    return Report(key, Kind.IGNORED, "not a bounce")


def _merged(blocks: list[Message]) -> Message:
    """One header block holding the fields of all blocks (ARF has a single one)."""
    merged = Message()
    for block in blocks:
        for name, value in block.items():
            merged[name] = value
    return merged


def is_confirmation(original_id: str) -> bool:
    """Tell whether a returned message's Message-ID is a confirmation mail's (no digest)."""
    return _CONFIRMATION_ID.fullmatch(original_id.strip()) is not None


def digest_hint(original_id: str) -> tuple[date, int] | None:
    """Return (day, subscriber id) from a digest's Message-ID '<YYYY-MM-DD.ID.KEY@domain>'
    or, as sent before, '<YYYY-MM-DD.ID@domain>'.

    Unsigned: only a hint for a subscriber already found some other way.
    """
    found = _DIGEST_ID.fullmatch(original_id.strip())
    if not found:
        return None
    try:
        return date.fromisoformat(found.group(1)), int(found.group(2))
    except ValueError:
        return None
