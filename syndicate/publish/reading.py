"""Build: read one dump, hash its bytes and parse them unless the cache has them already.

The pool's workers run `read_and_parse` on chunks of dumps (see pool.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

from syndicate import load
from syndicate.errors import DumpError
from syndicate.publish.hashing import digest as _hash
from syndicate.publish.staging import Stager
from syndicate.store import articles as store


def _encode_error(exc: DumpError) -> str:
    return json.dumps({"reason": exc.reason, "line": exc.line, "hint": exc.hint})


def decode_error(path: str, text: str) -> DumpError:
    try:
        data = json.loads(text)
        return DumpError(path, str(data["reason"]), line=data.get("line"), hint=data.get("hint"))
    except (ValueError, KeyError, TypeError):
        return DumpError(path, text)


class Read(NamedTuple):
    """What reading one dump (and parsing it, when the cache could not vouch) gave. A named
    tuple: it crosses from the workers, and pickles several times faster than a dataclass."""

    content_hash: str
    article_id: str | None
    error: str | None  # the encoded parse rejection
    row: store.ArticleRow | None  # the article, when parsed just now
    parsed: bool
    # The fingerprint and file stamp of the page a worker staged for the article, if any.
    staged: tuple[str, store.PageStamp] | None = None


def parse_version(timezone: str) -> int:
    """The cache's parser version: the loader's version and every setting parsing depends on.

    A publish time without an offset is read in site.timezone, so a cached parse made under
    another zone must not be reused.
    """
    digest = hashlib.blake2b(f"{load.PARSER_VERSION}:{timezone}".encode(), digest_size=6)
    return int.from_bytes(digest.digest(), "big")


def read_and_parse(
    path: str | Path,
    shown: str,
    cached: store.CachedDump | None,
    *,
    max_bytes: int,
    tz: ZoneInfo,
    stager: Stager | None = None,
    pin: load.DumpPin | None = None,
) -> Read:
    """Read one dump and parse it unless the cache has these exact bytes already.

    A `stager` renders the page of an article parsed here. Raises DumpError when the
    file cannot be read or is too large, or is no longer the file `pin` names.
    """
    data = load.read_dump(path, max_bytes=max_bytes, source=shown, pin=pin)
    content_hash = _hash(data)
    if (
        cached is not None
        and cached.content_hash == content_hash
        and cached.parser_version == parse_version(str(tz))
    ):
        return Read(content_hash, cached.article_id, cached.error, None, parsed=False)
    try:
        article, body = load.parse_dump_with_body(data, source=shown, tz=tz)
    except DumpError as exc:
        return Read(content_hash, None, _encode_error(exc), None, parsed=True)
    row = store.article_row(article, body)
    staged = stager.stage(article, row.record_hash, body) if stager is not None else None
    return Read(content_hash, article.id, None, row, parsed=True, staged=staged)
