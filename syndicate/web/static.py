"""Web: the output folder over HTTP, with validators (ETag, Last-Modified) and caching.

Only files named like the site's own (no dot files, no '..', a known extension)
and only inside the output folder (symlinks included) are ever served.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

from starlette.requests import Request

from syndicate.urls import FEED_FILES, FEED_TYPES

log = logging.getLogger(__name__)

# Static files up to this size are kept in memory (validated by a stat per request).
_CACHE_FILE_BYTES = 2 * 1024 * 1024
_CACHE_TOTAL_BYTES = 64 * 1024 * 1024
STATIC_CACHE_CONTROL = "public, max-age=300"

# Content types by path inside the output folder, then by extension.
_TYPES_BY_PATH = {
    FEED_FILES[kind]: f"{kind_type}; charset=utf-8" for kind, kind_type in FEED_TYPES.items()
}
_TYPES_BY_EXTENSION = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".xml": "application/xml; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}
# One path segment: no leading dot (no '..', no hidden or temp files), no separators.
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True, slots=True)
class StaticFile:
    key: tuple[int, int, int]  # (inode, size, mtime_ns): a changed file gets a new key
    body: bytes
    etag: str
    modified: int  # whole seconds since the epoch, as Last-Modified carries
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class LargeFile:
    """A file too large to keep in memory: streamed from disk on each request."""

    path: Path
    stat: os.stat_result
    etag: str
    modified: int
    headers: Mapping[str, str]


def content_type(relative: str) -> str | None:
    if relative in _TYPES_BY_PATH:
        return _TYPES_BY_PATH[relative]
    return _TYPES_BY_EXTENSION.get(os.path.splitext(relative)[1].lower())


def safe_relative(path: str) -> str | None:
    """The output-relative path for a URL path, or None when it may not be served."""
    if path in ("", "/"):
        return "index.html"
    parts = path.strip("/").split("/") if not path.startswith("//") else []
    if not parts or not all(_SEGMENT.fullmatch(part) for part in parts):
        return None
    if path.endswith("/"):
        return None
    relative = "/".join(parts)
    return relative if content_type(relative) else None


def file_headers(content_type: str, etag: str, modified: int) -> dict[str, str]:
    return {
        "content-type": content_type,
        "etag": etag,
        "last-modified": formatdate(modified, usegmt=True),
        "cache-control": STATIC_CACHE_CONTROL,
    }


def not_modified(request: Request, etag: str, modified: int) -> bool:
    """RFC 9110 13.2.2: If-None-Match decides when present, else If-Modified-Since."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        wanted = etag.removeprefix("W/")
        return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError, IndexError):
            return False
        if since.tzinfo is None:
            return False
        return modified <= since.timestamp()
    return False


class OutputFolder:
    """Serves files of the output folder, keeping small ones in memory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: OrderedDict[str, StaticFile] = OrderedDict()
        self._cached_bytes = 0

    def _resolve(self, relative: str) -> Path | None:
        path = self.root / relative
        try:
            real = path.resolve(strict=True)
            root = self.root.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        # A symlink inside the output folder may not lead outside it.
        return real if real.is_relative_to(root) else None

    def lookup(self, relative: str) -> StaticFile | LargeFile | None:
        """The file at `relative` (cached in memory, or large), or None for a 404."""
        media_type = content_type(relative)
        if media_type is None:
            return None
        path = self.root / relative
        try:
            st = os.stat(path)
        except OSError:
            self._forget(relative)
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(relative)
        if cached is not None and cached.key == key:
            self._cache.move_to_end(relative)
            return cached
        real = self._resolve(relative)
        if real is None or not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > _CACHE_FILE_BYTES:
            etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
            modified = int(st.st_mtime)
            return LargeFile(real, st, etag, modified, file_headers(media_type, etag, modified))
        try:
            with open(real, "rb") as handle:
                # fstat and read the same open file, so validators match the bytes even
                # when a build replaces the file between our stat and read.
                fst = os.fstat(handle.fileno())
                body = handle.read()
        except OSError as exc:
            log.warning("%s: cannot read: %s", real, exc)
            return None
        key = (fst.st_ino, fst.st_size, fst.st_mtime_ns)
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        modified = int(fst.st_mtime)
        entry = StaticFile(key, body, etag, modified, file_headers(media_type, etag, modified))
        self._store(relative, entry)
        return entry

    def _store(self, relative: str, entry: StaticFile) -> None:
        self._forget(relative)
        self._cache[relative] = entry
        self._cached_bytes += len(entry.body)
        while self._cached_bytes > _CACHE_TOTAL_BYTES and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old.body)

    def _forget(self, relative: str) -> None:
        old = self._cache.pop(relative, None)
        if old is not None:
            self._cached_bytes -= len(old.body)
