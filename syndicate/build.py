"""Build: the edge that runs the pipeline: dumps -> store -> feeds and pages -> output folder.

`sync_articles` brings the `articles` table up to date with the dumps, reusing
what earlier runs parsed (the `dumps` cache: stat signature first, then content
hash, and the parser version). `run_build` then writes the feeds and pages,
rendering only pages whose inputs changed (fingerprints in the `pages` table).
Neither holds every article body in memory: dumps and pages go through in
bounded batches, and each page loads its article from the store when it is
rendered. With many dumps or pages to do, reading and parsing, then rendering
and writing article pages, run in worker processes (one per core, forked) while
this process keeps the store and the counts, in the same order as alone; page
files are written by a background thread. Every file is still written whole
(temp file and rename in the same folder).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from syndicate import load
from syndicate.config import Settings, base_url, site_templates_dir
from syndicate.errors import DumpError, OutputError, SyndicateError
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

_T = TypeVar("_T")

Progress = Callable[[int, int], None]

# Dumps stored per write transaction: short transactions keep the web app responsive.
_SYNC_BATCH = 500
# Reading and parsing go to worker processes when at least this many dumps need it.
_PARALLEL_MIN = 512
_MAX_WORKERS = 4
_CHUNK = 64  # dumps per worker task
_CHUNKS_IN_FLIGHT = 8  # tasks out at a time: bounds the results held in memory
# A dump modified less than this before the run is cached with no usable mtime.
_RACY_WINDOW_NS = 2_000_000_000
_RACY_MTIME = -1
# Rendered pages waiting for the writer thread, at most (bounds the memory they hold).
_WRITES_IN_FLIGHT = 64


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
            path = path.relative_to(cwd)
        except ValueError:
            pass
    return load.display_path(path)


@dataclass(frozen=True, slots=True)
class _Read:
    """What reading one dump (and parsing it, when the cache could not vouch) gave."""

    content_hash: str
    article_id: str | None
    error: str | None  # the encoded parse rejection
    row: store.ArticleRow | None  # the article, when parsed just now
    parsed: bool


def parse_version(timezone: str) -> int:
    """The cache's parser version: the loader's version and every setting parsing depends on.

    A publish time without an offset is read in site.timezone, so a cached parse made under
    another zone must not be reused.
    """
    digest = hashlib.blake2b(f"{load.PARSER_VERSION}:{timezone}".encode(), digest_size=6)
    return int.from_bytes(digest.digest(), "big")


def _read_and_parse(
    path: Path, shown: str, cached: store.CachedDump | None, *, max_bytes: int, tz: ZoneInfo
) -> _Read:
    """Read one dump and parse it unless the cache has these exact bytes already.

    Raises DumpError when the file cannot be read or is too large.
    """
    data = load.read_dump(path, max_bytes=max_bytes, source=shown)
    content_hash = _hash(data)
    if (
        cached is not None
        and cached.content_hash == content_hash
        and cached.parser_version == parse_version(str(tz))
    ):
        return _Read(content_hash, cached.article_id, cached.error, None, parsed=False)
    try:
        article = load.parse_dump(data, source=shown, tz=tz)
    except DumpError as exc:
        return _Read(content_hash, None, _encode_error(exc), None, parsed=True)
    return _Read(content_hash, article.id, None, store.article_row(article), parsed=True)


# A dump's stat signature: device, inode, size, mtime_ns (small: one is kept per dump).
_Signature = tuple[int, int, int, int]
# One unit of work for a parse worker: path, shown path, cache entry.
_Job = tuple[Path, str, "store.CachedDump | None"]
# A read failure, as plain values (DumpError does not pickle): path, reason, line, hint.
_Failed = tuple[str, str, int | None, str | None]


def _work(jobs: list[_Job], max_bytes: int, timezone: str) -> list[_Read | _Failed]:
    """Run `_read_and_parse` on a chunk of jobs, in a worker process."""
    tz = ZoneInfo(timezone)
    out: list[_Read | _Failed] = []
    for path, shown, cached in jobs:
        try:
            out.append(_read_and_parse(path, shown, cached, max_bytes=max_bytes, tz=tz))
        except DumpError as exc:
            out.append((exc.path, exc.reason, exc.line, exc.hint))
    return out


class _Sync:
    """Syncs one dump at a time, in path order: cache, dedup, articles, counts."""

    def __init__(self, settings: Settings, db: Database, *, now: datetime) -> None:
        self.settings = settings
        self.db = db
        self.now = now
        self.tz = settings.site.tz
        self.max_bytes = settings.load.max_bytes
        self.parser_version = parse_version(settings.site.timezone)
        self.cache = store.read_dump_cache(db)
        self.sources = store.read_article_sources(db)
        # Files modified this close to the run's start have an untrustworthy signature.
        self.racy_after_ns = time.time_ns() - _RACY_WINDOW_NS
        self.ids: set[str] = set()
        self.errors: list[DumpError] = []
        self.duplicates = 0
        self.new = 0
        self.parsed = 0

    def signature(self, path: Path, shown: str) -> _Signature | DumpError:
        """The stat signature of a dump (taken before it is read), or why it cannot be read."""
        try:
            load.check_name(path, source=shown)
        except DumpError as exc:
            return exc
        try:
            st = path.stat()
        except OSError as exc:
            return DumpError(shown, f"cannot be read: {exc.strerror or exc}.")
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def vouched(self, key: str, st: _Signature) -> store.CachedDump | None:
        """The cache entry when the stat signature and parser version match, else None."""
        cached = self.cache.get(key)
        if (
            cached is not None
            and (cached.device, cached.inode, cached.size, cached.mtime_ns) == st
            and cached.parser_version == self.parser_version
            # A lowered load.max_bytes must reject a dump it accepted before.
            and cached.size <= self.max_bytes
        ):
            return cached
        return None

    def read(self, path: Path, key: str, shown: str) -> _Read:
        """Read (and parse when needed) in this process; DumpError when unreadable."""
        return _read_and_parse(
            path, shown, self.cache.get(key), max_bytes=self.max_bytes, tz=self.tz
        )

    def add(
        self,
        path: Path,
        key: str,
        shown: str,
        st: _Signature | DumpError,
        read: _Read | DumpError | None = None,
    ) -> None:
        """Sync the dump at `path` (cache key `key`, shown to the user as `shown`).

        `st` is its signature from `signature`; `read` what reading it gave when that was
        done already (by a worker), else it is read here when the cache cannot vouch.
        """
        if isinstance(st, DumpError):  # unreadable: not cached, retried next run
            self._skip(st)
            return
        entry = self.vouched(key, st)
        row = None
        if entry is None:
            try:
                got = read if read is not None else self.read(path, key, shown)
            except DumpError as exc:
                got = exc
            if isinstance(got, DumpError):  # unreadable or too large: not cached
                self._skip(got)
                return
            entry, row = self._record(key, st, got), got.row
        if entry.article_id is None:
            self._skip(_decode_error(shown, entry.error or "rejected"))
            return
        if entry.article_id in self.ids:
            self.duplicates += 1
            return
        # The first path in sorted order owns the stored record: parse again when the
        # record came from another dump (the owner changed, or the store lost it).
        if row is None and self.sources.get(entry.article_id) != shown:
            try:
                data = load.read_dump(path, max_bytes=self.max_bytes, source=shown)
                self.parsed += 1
                row = store.article_row(load.parse_dump(data, source=shown, tz=self.tz))
            except DumpError as exc:
                self._skip(exc)
                return
        self.ids.add(entry.article_id)
        if row is not None:
            # self.sources holds every stored id: no need to ask the store whether it is new.
            existed = row.id in self.sources
            self.sources[row.id] = shown
            self.new += store.upsert_row(self.db, row, now=self.now, existed=existed)

    def _record(self, key: str, st: _Signature, got: _Read) -> store.CachedDump:
        """Cache what reading a dump gave, under the signature taken before the read."""
        self.parsed += got.parsed
        device, inode, size, mtime_ns = st
        if mtime_ns >= self.racy_after_ns:
            # Modified moments before this run: a later write in the same timestamp tick
            # would keep the signature, so it must not vouch for this content (as git
            # does with "racy" index entries); the next run checks the content hash.
            mtime_ns = _RACY_MTIME
        entry = store.CachedDump(
            device,
            inode,
            size,
            mtime_ns,
            got.content_hash,
            self.parser_version,
            got.article_id,
            got.error,
        )
        store.write_dump(self.db, key, entry)
        return entry

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


def _parallel_reads(
    sync: _Sync, todo: list[tuple[Path, str, str]], settings: Settings
) -> Generator[_Read | DumpError, None, None]:
    """Read and parse `todo` (path, key, shown) in worker processes, yielding in order.

    At most `_CHUNKS_IN_FLIGHT` chunks are out at a time, so memory stays bounded
    however many dumps there are.
    """
    workers = min(_MAX_WORKERS, os.cpu_count() or 1)
    chunks = (
        [(path, shown, sync.cache.get(key)) for path, key, shown in todo[i : i + _CHUNK]]
        for i in range(0, len(todo), _CHUNK)
    )
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[Future[list[_Read | _Failed]]] = deque()
        try:
            for chunk in itertools.islice(chunks, _CHUNKS_IN_FLIGHT):
                pending.append(
                    pool.submit(_work, chunk, settings.load.max_bytes, settings.site.timezone)
                )
            while pending:
                results = _result(pending.popleft())
                chunk = next(chunks, [])
                if chunk:
                    pending.append(
                        pool.submit(_work, chunk, settings.load.max_bytes, settings.site.timezone)
                    )
                for got in results:
                    if isinstance(got, tuple):
                        yield DumpError(got[0], got[1], line=got[2], hint=got[3])
                    else:
                        yield got
        finally:
            for future in pending:
                future.cancel()


def _result(future: Future[_T]) -> _T:
    """A worker's result; SyndicateError when the worker process died."""
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise SyndicateError(
            f"build: a worker process stopped unexpectedly ({exc}).",
            hint="Run the build again; if it keeps failing, check the memory available.",
        ) from exc


def _use_workers(count: int) -> bool:
    return (
        count >= _PARALLEL_MIN
        and (os.cpu_count() or 1) > 1
        and "fork" in multiprocessing.get_all_start_methods()
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
    for a missing path. Many dumps to read are read and parsed by worker
    processes (one per core), the results still taken in path order.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    roots = list(paths) if paths else [settings.paths.seeds]
    found = sorted(set(load.find_dumps(roots)), key=str)
    total = len(found)
    cwd = Path.cwd()
    sync = _Sync(settings, db, now=now)
    # Every signature is taken before any dump is read (a write after it shows up next run),
    # which also tells which dumps must be read: those the cache cannot vouch for.
    items = []
    for path in found:
        key, shown = str(path.absolute()), _shown(path, cwd)
        st = sync.signature(path, shown)
        must_read = not isinstance(st, DumpError) and sync.vouched(key, st) is None
        items.append((path, key, shown, st, must_read))
    todo = [(path, key, shown) for path, key, shown, _st, must_read in items if must_read]
    reads = _parallel_reads(sync, todo, settings) if _use_workers(len(todo)) else None
    seen: set[str] = set()
    try:
        for start in range(0, total, _SYNC_BATCH):
            with db.transaction():
                for done, (path, key, shown, st, must_read) in enumerate(
                    items[start : start + _SYNC_BATCH], start + 1
                ):
                    seen.add(key)
                    read = next(reads) if reads is not None and must_read else None
                    sync.add(path, key, shown, st, read)
                    if progress is not None:
                        progress(done, total)
    finally:
        if reads is not None:
            reads.close()
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
    """Writes pages under the output folder, skipping those whose fingerprint is unchanged.

    Page writes run on one background thread (file system calls release the GIL, so
    they overlap with rendering the next page); at most `_WRITES_IN_FLIGHT` pages wait
    in memory. `finish()` waits for them all and raises the first write error.
    """

    def __init__(self, output: Path, fingerprints: dict[str, str]) -> None:
        self.output = output
        self.old = fingerprints
        self.new: dict[str, str] = {}
        self.written = 0
        self.unchanged = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syndicate-write")
        self._pending: deque[tuple[str, str, Future[bool]]] = deque()

    def fresh(self, rel: str, fingerprint: str) -> bool:
        """True (and counted as unchanged) when `rel` was built from these inputs before."""
        if self.old.get(rel) == fingerprint and (self.output / rel).is_file():
            self.new[rel] = fingerprint
            self.unchanged += 1
            return True
        return False

    def write(self, rel: str, data: bytes, fingerprint: str, *, fsync: bool) -> None:
        """Queue an atomic write of `data` to `rel`; counted once it is done."""
        future = self._pool.submit(write_atomic, self.output / rel, data, fsync=fsync)
        self._pending.append((rel, fingerprint, future))
        if len(self._pending) > _WRITES_IN_FLIGHT:
            self._settle()

    def _settle(self) -> None:
        rel, fingerprint, future = self._pending.popleft()
        self.record(rel, fingerprint, changed=future.result())

    def record(self, rel: str, fingerprint: str, *, changed: bool) -> None:
        """Count a page written (elsewhere) from inputs with this fingerprint."""
        if changed:
            self.written += 1
        else:
            self.unchanged += 1
        self.new[rel] = fingerprint

    def drain(self) -> None:
        """Wait for every queued write; raise the first failure."""
        while self._pending:
            self._settle()

    def finish(self) -> None:
        """Wait for every queued write and stop the thread; raise the first failure."""
        try:
            self.drain()
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Drop the writes not started yet and wait for the one in progress (no errors)."""
        for _rel, _fingerprint, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)


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
    slugs = assign_slugs((s.id, s.slug, s.published, s.first_seen_at) for s in summaries)
    writer = _Writer(output, store.read_page_fingerprints(db))
    try:
        _write_pages(settings, db, writer, renderer, info, summaries, slugs, now=now)
    except BaseException:
        writer.abandon()
        raise
    writer.finish()

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


def _write_pages(
    settings: Settings,
    db: Database,
    writer: _Writer,
    renderer: SiteRenderer,
    info: SiteInfo,
    summaries: Sequence[store.ArticleSummary],
    slugs: dict[str, str],
    *,
    now: datetime,
) -> None:
    """Render and queue the feeds, the article pages and the index pages."""
    _write_feeds(settings, db, writer, summaries, slugs)
    todo: list[tuple[str, str, str, str]] = []  # rel, slug, article id, fingerprint
    for summary in summaries:
        slug = slugs[summary.id]
        rel = article_path(slug)
        fingerprint = _hash(f"{renderer.fingerprint}\0{slug}\0{summary.record_hash}".encode())
        if not writer.fresh(rel, fingerprint):
            todo.append((rel, slug, summary.id, fingerprint))
    if _use_workers(len(todo)):
        writer.drain()  # the writer thread sits idle while the workers are forked
        _write_articles_in_workers(db, writer, info, todo)
    else:
        for rel, slug, article_id, fingerprint in todo:
            article = Article.from_record(json.loads(_record(db, article_id)))
            data = renderer.render_article(article, slug=slug)
            writer.write(rel, data, fingerprint, fsync=False)

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


def _record(db: Database, article_id: str) -> str:
    record = store.get_record(db, article_id)
    if record is None:  # pragma: no cover - the sync just stored it
        raise SyndicateError(f"{db.path}: article {article_id!r} vanished during the build.")
    return record


# A worker's renderer and output folder (set by `_start_renderer` in each worker process).
_WORKER_RENDERER: tuple[SiteRenderer, Path] | None = None


def _start_renderer(info: SiteInfo, output: Path) -> None:
    global _WORKER_RENDERER
    _WORKER_RENDERER = (SiteRenderer(info, site_templates_dir()), output)


def _render_articles(chunk: list[tuple[str, str, str]]) -> list[bool] | tuple[str, str | None]:
    """Render and write (rel, slug, record) pages in a worker: whether each file changed,
    or the (message, hint) of the first error (SyndicateError does not pickle whole)."""
    if _WORKER_RENDERER is None:  # pragma: no cover - the pool's initializer sets it
        raise RuntimeError("_render_articles runs in a worker started by _start_renderer")
    renderer, output = _WORKER_RENDERER
    changed = []
    try:
        for rel, slug, record in chunk:
            article = Article.from_record(json.loads(record))
            data = renderer.render_article(article, slug=slug)
            changed.append(write_atomic(output / rel, data, fsync=False))
    except SyndicateError as exc:
        return (exc.message, exc.hint)
    return changed


def _write_articles_in_workers(
    db: Database, writer: _Writer, info: SiteInfo, todo: list[tuple[str, str, str, str]]
) -> None:
    """Render and write article pages in worker processes (one per core, each with its own
    renderer); this process reads the records and keeps the counts, in page order."""
    workers = min(_MAX_WORKERS, os.cpu_count() or 1)
    chunks = (todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK))
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_start_renderer,
        initargs=(info, writer.output),
    ) as pool:
        pending: deque[tuple[list[tuple[str, str, str, str]], Future[Any]]] = deque()

        def submit(chunk: list[tuple[str, str, str, str]]) -> None:
            work = [(rel, slug, _record(db, article_id)) for rel, slug, article_id, _fp in chunk]
            pending.append((chunk, pool.submit(_render_articles, work)))

        try:
            for chunk in itertools.islice(chunks, _CHUNKS_IN_FLIGHT):
                submit(chunk)
            while pending:
                chunk, future = pending.popleft()
                result = _result(future)
                if isinstance(result, tuple):
                    raise OutputError(result[0], hint=result[1])
                for (rel, _slug, _id, fingerprint), changed in zip(chunk, result, strict=True):
                    writer.record(rel, fingerprint, changed=changed)
                following = next(chunks, [])
                if following:
                    submit(following)
        finally:
            for _chunk, future in pending:
                future.cancel()


def _top_articles(
    db: Database, summaries: Sequence[store.ArticleSummary], limit: int
) -> Iterator[Article]:
    for summary in summaries[:limit]:
        article = store.get_article(db, summary.id)
        if article is not None:
            yield article


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _write_feeds(
    settings: Settings,
    db: Database,
    writer: _Writer,
    summaries: Sequence[store.ArticleSummary],
    slugs: dict[str, str],
) -> None:
    limit = settings.feeds.limit
    top = list(_top_articles(db, summaries, limit))
    info = _feed_info(settings)
    urls = {a.id: article_url(info.base_url, slugs[a.id]) for a in top}
    # The feed's updated time is the newest publish date. When no article in it has one,
    # it is when syndicate first saw the newest of them: stored, so a rebuild gives the
    # same bytes; never the clock. An empty feed uses the Unix epoch for the same reason.
    ids = {a.id for a in top}
    seen = [s.first_seen_at for s in summaries if s.id in ids]
    fallback = max(seen) if seen else _EPOCH
    for kind, name in FEED_FILES.items():
        data = build_feed(
            top,
            kind=kind,  # type: ignore[arg-type]
            now=fallback.astimezone(UTC),
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
