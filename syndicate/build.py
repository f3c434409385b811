"""Build: the edge that runs the pipeline: dumps -> store -> feeds and pages -> output folder.

`sync_articles` brings the `articles` table up to date with the dumps, reusing
what earlier runs parsed (the `dumps` cache: stat signature first, then content
hash, and the parser version). `run_build` then writes the feeds and pages,
rendering only pages whose inputs changed (fingerprints in the `pages` table).
Neither holds every article body in memory: one dump is in flight at a time,
and each page loads its article from the store when it is rendered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from syndicate import load
from syndicate.config import Settings, base_url, site_templates_dir
from syndicate.errors import DumpError, SyndicateError
from syndicate.feeds import FEED_FILES, FeedInfo, build_feed
from syndicate.model import Article
from syndicate.output import write_atomic
from syndicate.site import (
    IndexEntry,
    SiteInfo,
    SiteRenderer,
    article_path,
    article_url,
    assign_slugs,
    index_path,
    page_count,
)
from syndicate.store import Database
from syndicate.store import articles as store

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

# Dumps stored per write transaction: short transactions keep the web app responsive.
_SYNC_BATCH = 500
# A dump modified less than this before the run is cached with no usable mtime.
_RACY_WINDOW_NS = 2_000_000_000
_RACY_MTIME = -1


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What `sync_articles` found in the dumps."""

    articles: int  # distinct articles (after dedup)
    new: int  # of which the store had never seen
    duplicates: int  # dumps whose article an earlier path already gave
    skipped: int  # dumps rejected (one warning each)
    errors: tuple[DumpError, ...]
    article_ids: frozenset[str]  # the distinct articles, for the site and feeds


@dataclass(frozen=True, slots=True)
class BuildSummary:
    """The outcome of one `syndicate build`."""

    articles: int
    duplicates: int
    skipped: int
    written: int  # files whose bytes changed (or were new)
    unchanged: int  # files left as they were
    seconds: float
    errors: tuple[DumpError, ...]
    removed: int = 0  # stale pages deleted


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _encode_error(exc: DumpError) -> str:
    return json.dumps({"reason": exc.reason, "line": exc.line, "hint": exc.hint})


def _decode_error(path: str, text: str) -> DumpError:
    try:
        data = json.loads(text)
        return DumpError(path, str(data["reason"]), line=data.get("line"), hint=data.get("hint"))
    except (ValueError, KeyError, TypeError):
        return DumpError(path, text)


def _shown(path: Path, cwd: Path) -> str:
    """The path for messages and Article.source: relative to the working folder when inside."""
    if path.is_absolute():
        try:
            return str(path.relative_to(cwd))
        except ValueError:
            return str(path)
    return str(path)


class _Sync:
    """Syncs one dump at a time, in path order: cache, dedup, articles, counts."""

    def __init__(self, settings: Settings, db: Database, *, now: datetime) -> None:
        self.settings = settings
        self.db = db
        self.now = now
        self.tz = settings.site.tz
        self.cache = store.read_dump_cache(db)
        self.sources = store.read_article_sources(db)
        # Files modified this close to the run's start have an untrustworthy signature.
        self.racy_after_ns = time.time_ns() - _RACY_WINDOW_NS
        self.ids: set[str] = set()
        self.errors: list[DumpError] = []
        self.duplicates = 0
        self.new = 0
        self.parsed = 0

    def add(self, path: Path, key: str, shown: str) -> None:
        """Sync the dump at `path` (cache key `key`, shown to the user as `shown`)."""
        try:
            entry, article = self._entry(path, key, shown)
        except DumpError as exc:  # unreadable or too large: not cached, retried next run
            self._skip(exc)
            return
        if entry.article_id is None:
            self._skip(_decode_error(shown, entry.error or "rejected"))
            return
        if entry.article_id in self.ids:
            self.duplicates += 1
            return
        # The first path in sorted order owns the stored record: parse again when the
        # record came from another dump (the owner changed, or the store lost it).
        if article is None and self.sources.get(entry.article_id) != shown:
            try:
                article = self._parse(path, shown)
            except DumpError as exc:
                self._skip(exc)
                return
        self.ids.add(entry.article_id)
        if article is not None:
            self.sources[article.id] = shown
            self.new += store.upsert_article(self.db, article, now=self.now)

    def _parse(self, path: Path, shown: str) -> Article:
        data = load.read_dump(path, max_bytes=self.settings.load.max_bytes)
        self.parsed += 1
        return load.parse_dump(data, source=shown, tz=self.tz)

    def _entry(self, path: Path, key: str, shown: str) -> tuple[store.CachedDump, Article | None]:
        """The cache entry of a dump, parsing it only when the cache cannot vouch for it."""
        try:
            st = path.stat()
        except OSError as exc:
            raise DumpError(shown, f"cannot be read: {exc.strerror or exc}.") from exc
        cached = self.cache.get(key)
        version = load.PARSER_VERSION
        if (
            cached is not None
            and (cached.device, cached.inode, cached.size, cached.mtime_ns)
            == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            and cached.parser_version == version
        ):
            return cached, None
        # The signature was taken before reading: a write after it shows up next run.
        data = load.read_dump(path, max_bytes=self.settings.load.max_bytes)
        content_hash = _hash(data)
        article = None
        if (
            cached is not None
            and cached.content_hash == content_hash
            and cached.parser_version == version
        ):
            article_id, error = cached.article_id, cached.error
        else:
            self.parsed += 1
            try:
                article = load.parse_dump(data, source=shown, tz=self.tz)
                article_id, error = article.id, None
            except DumpError as exc:
                article_id, error = None, _encode_error(exc)
        mtime_ns = st.st_mtime_ns
        if mtime_ns >= self.racy_after_ns:
            # Modified moments before this run: a later write in the same timestamp tick
            # would keep the signature, so it must not vouch for this content (as git
            # does with "racy" index entries); the next run checks the content hash.
            mtime_ns = _RACY_MTIME
        entry = store.CachedDump(
            st.st_dev, st.st_ino, st.st_size, mtime_ns, content_hash, version, article_id, error
        )
        store.write_dump(self.db, key, entry)
        return entry, article

    def _skip(self, error: DumpError) -> None:
        log.warning("%s", error)
        self.errors.append(error)

    def result(self) -> SyncResult:
        return SyncResult(
            articles=len(self.ids),
            new=self.new,
            duplicates=self.duplicates,
            skipped=len(self.errors),
            errors=tuple(self.errors),
            article_ids=frozenset(self.ids),
        )


def sync_articles(
    settings: Settings,
    db: Database,
    *,
    now: datetime,
    paths: Sequence[Path] | None = None,
    progress: Progress | None = None,
) -> SyncResult:
    """Bring the store up to date with the dumps under `paths` (default: paths.seeds).

    Dumps are taken in sorted path order; when two give the same Article.id the
    first one wins and the others count as duplicates. A rejected dump is logged
    as one warning (`path: reason`) and counted; the run goes on. New articles
    get first_seen_at = `now`. A dump whose stat signature (else content hash)
    and parser version match the cache is not parsed again. Raises InputError
    for a missing path.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    roots = list(paths) if paths else [settings.paths.seeds]
    found = sorted(set(load.find_dumps(roots)), key=str)
    total = len(found)
    cwd = Path.cwd()
    sync = _Sync(settings, db, now=now)
    seen: set[str] = set()
    for start in range(0, total, _SYNC_BATCH):
        with db.transaction():
            for done, path in enumerate(found[start : start + _SYNC_BATCH], start + 1):
                key = str(path.absolute())
                seen.add(key)
                sync.add(path, key, _shown(path, cwd))
                if progress is not None:
                    progress(done, total)
    gone = [key for key in sync.cache if key not in seen and not os.path.exists(key)]
    if gone:
        with db.transaction():
            store.delete_dumps(db, gone)
    if progress is not None and not total:
        progress(0, 0)
    result = sync.result()
    log.info(
        "%d dumps: %d parsed, %d taken from the cache; %d articles, %d new",
        total,
        sync.parsed,
        total - sync.parsed,
        result.articles,
        result.new,
    )
    return result


def _site_info(settings: Settings) -> SiteInfo:
    site = settings.site
    return SiteInfo(
        title=site.title,
        description=site.description,
        base_url=base_url(settings),
        language=site.language,
        timezone=site.timezone,
        page_size=site.page_size,
    )


def _feed_info(settings: Settings) -> FeedInfo:
    site = settings.site
    return FeedInfo(
        title=site.title,
        description=site.description,
        base_url=base_url(settings),
        language=site.language,
        timezone=site.timezone,
    )


def _newest_first_key(summary: store.ArticleSummary) -> tuple[bool, float, str]:
    published = summary.published
    return (published is None, -published.timestamp() if published else 0.0, summary.id)


class _Writer:
    """Writes pages under the output folder, skipping those whose fingerprint is unchanged."""

    def __init__(self, output: Path, fingerprints: dict[str, str]) -> None:
        self.output = output
        self.old = fingerprints
        self.new: dict[str, str] = {}
        self.written = 0
        self.unchanged = 0

    def fresh(self, rel: str, fingerprint: str) -> bool:
        """True (and counted as unchanged) when `rel` was built from these inputs before."""
        if self.old.get(rel) == fingerprint and (self.output / rel).is_file():
            self.new[rel] = fingerprint
            self.unchanged += 1
            return True
        return False

    def write(self, rel: str, data: bytes, fingerprint: str, *, fsync: bool) -> None:
        if write_atomic(self.output / rel, data, fsync=fsync):
            self.written += 1
        else:
            self.unchanged += 1
        self.new[rel] = fingerprint


def run_build(
    settings: Settings,
    db: Database,
    *,
    now: datetime,
    paths: Sequence[Path] | None = None,
    progress: Progress | None = None,
) -> BuildSummary:
    """Sync the store with the dumps, then write feeds and pages into paths.output.

    Writes rss.xml, atom.xml, feed.json, articles/<slug>.html and index.html
    (+ page/<n>.html archive pages) for the articles found in the dumps. Writes
    are atomic and files whose bytes did not change are not rewritten; article
    and index pages whose inputs did not change are not even rendered. Pages an
    earlier build wrote that no longer belong to the site are deleted.
    """
    started = time.perf_counter()
    sync = sync_articles(settings, db, now=now, paths=paths, progress=progress)
    output = settings.paths.output
    info = _site_info(settings)
    renderer = SiteRenderer(info, site_templates_dir())

    summaries = sorted(
        (s for s in store.iter_summaries(db) if s.id in sync.article_ids), key=_newest_first_key
    )
    slugs = assign_slugs((s.id, s.slug, s.published) for s in summaries)
    writer = _Writer(output, store.read_page_fingerprints(db))

    _write_feeds(settings, db, writer, summaries, slugs, now=now)
    for summary in summaries:
        slug = slugs[summary.id]
        rel = article_path(slug)
        fingerprint = _hash(f"{renderer.fingerprint}\0{slug}\0{summary.record_hash}".encode())
        if writer.fresh(rel, fingerprint):
            continue
        article = store.get_article(db, summary.id)
        if article is None:  # pragma: no cover - the sync just stored it
            raise SyndicateError(f"{db.path}: article {summary.id!r} vanished during the build.")
        writer.write(rel, renderer.render_article(article, slug=slug), fingerprint, fsync=False)

    pages = page_count(len(summaries), info.page_size)
    for page in range(1, pages + 1):
        chunk = summaries[(page - 1) * info.page_size : page * info.page_size]
        entries = [
            IndexEntry(s.id, slugs[s.id], s.title, s.published, s.precision, s.author)
            for s in chunk
        ]
        rel = index_path(page)
        fingerprint = _hash(repr((renderer.fingerprint, page, pages, entries)).encode())
        if writer.fresh(rel, fingerprint):
            continue
        data = renderer.render_index(entries, page=page, pages=pages)
        writer.write(rel, data, fingerprint, fsync=page == 1)

    removed = _remove_stale(output, writer)
    with db.transaction():
        store.delete_page_fingerprints(db, (rel for rel in writer.old if rel not in writer.new))
        store.write_page_fingerprints(
            db, ((rel, fp) for rel, fp in writer.new.items() if writer.old.get(rel) != fp)
        )
    return BuildSummary(
        articles=sync.articles,
        duplicates=sync.duplicates,
        skipped=sync.skipped,
        written=writer.written,
        unchanged=writer.unchanged,
        seconds=time.perf_counter() - started,
        errors=sync.errors,
        removed=removed,
    )


def _top_articles(
    db: Database, summaries: Sequence[store.ArticleSummary], limit: int
) -> Iterator[Article]:
    for summary in summaries[:limit]:
        article = store.get_article(db, summary.id)
        if article is not None:
            yield article


def _write_feeds(
    settings: Settings,
    db: Database,
    writer: _Writer,
    summaries: Sequence[store.ArticleSummary],
    slugs: dict[str, str],
    *,
    now: datetime,
) -> None:
    limit = settings.feeds.limit
    top = list(_top_articles(db, summaries, limit))
    info = _feed_info(settings)
    urls = {a.id: article_url(info.base_url, slugs[a.id]) for a in top}
    for kind, name in FEED_FILES.items():
        data = build_feed(
            top,
            kind=kind,  # type: ignore[arg-type]
            now=now.astimezone(UTC),
            info=info,
            limit=limit,
            page_urls=urls,
        )
        writer.write(name, data, _hash(data), fsync=True)


def _remove_stale(output: Path, writer: _Writer) -> int:
    """Delete pages an earlier build wrote that this build did not produce."""
    removed = 0
    for rel in sorted(writer.old):
        if rel in writer.new:
            continue
        target = output / rel
        try:
            target.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("%s: cannot remove a stale page: %s", target, exc.strerror or exc)
    return removed
