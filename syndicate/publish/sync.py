"""Build: bring the `articles` table up to date with the dumps, reusing what earlier runs parsed.

The `dumps` cache vouches for a dump by its stat signature, else its content
hash, and the parser version. Dumps go through in path order and in bounded
batches (one short write transaction each); with many to read, reading and
parsing run in worker processes while this process keeps the store and counts.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from syndicate import load
from syndicate.config import Settings
from syndicate.errors import ClockError, DumpError, InputError
from syndicate.publish.pool import BuildPool, BuildTuning
from syndicate.publish.reading import Read, decode_error, parse_version, read_and_parse
from syndicate.store import Database
from syndicate.store import articles as store

# The stage's logger.
log = logging.getLogger("syndicate.publish")

Progress = Callable[[int, int], None]

# Dumps stored per write transaction: short transactions keep the web app responsive.
# PostgreSQL parses each statement of a batch on its own (parameters are bound on the
# client) and takes about 5 times SQLite's time for one: a fifth of the rows holds the
# write lock about as long.
_SYNC_BATCH = {"sqlite": 500, "postgresql": 100}
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
    read: int = 0  # dumps whose bytes were read: those the cache could not vouch for by stat
    parsed: int = 0  # dumps parsed (the others were vouched for by stat or content hash)


def _text(body: bytes | None) -> str | None:
    return None if body is None else body.decode("utf-8")


def _shown(path: str, cwd: str) -> str:
    """The path for messages and Article.source: relative to the working folder when inside.

    `path` is a `str(Path)` (normalised) and `cwd` an absolute folder, so comparing text is
    what Path.relative_to would do, without building a Path per dump.
    """
    if os.path.isabs(path):
        inside = cwd.rstrip("/") + "/"
        if path.startswith(inside):
            path = path[len(inside) :]
    return load.display_path(path)


# A dump's stat signature: device, inode, size, mtime_ns (small: one is kept per dump).
_Signature = tuple[int, int, int, int]


class _Sync:
    """Syncs one dump at a time, in path order: cache, dedup, articles, counts."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        now: datetime,
        roots: Sequence[Path] = (),
    ) -> None:
        self.settings = settings
        self.db = db
        self.now = now
        self.tz = settings.site.tz
        self.max_bytes = settings.load.max_bytes
        self.parser_version = parse_version(settings.site.timezone)
        self.cache = store.read_dump_cache(db)
        # How many dumps give each article: the ones read this run as read, the others as
        # cached (count_holders: a dump gone since gives none).
        self.holders: Counter[str] = Counter()
        # The link check (shared with load.read_dumps): where links must stay inside.
        self.links = load.LinkCheck(roots, follow_symlinks=settings.load.follow_symlinks)
        # Paths that were links when signed, checked to stay inside the folders (rare).
        self.checked_links: set[str] = set()
        self.sources = store.read_article_sources(db)
        # The articles this run stored first (not in `sources` before it).
        self.created: set[str] = set()
        # The slug each stored article was first published under (it never changes): read
        # when the first record is stored, so a run that stores none does not hold them all.
        self._slugs: dict[str, str] | None = None
        # Articles whose stored record this run rewrote, and where a pending row sits.
        self.touched: set[str] = set()
        self.pending: dict[str, int] = {}
        # Files modified this close to the run's start have an untrustworthy signature.
        self.racy_after_ns = time.time_ns() - _RACY_WINDOW_NS
        self.ids: set[str] = set()
        self.errors: list[DumpError] = []
        self.duplicates = 0
        self.new = 0
        self.read_count = 0
        self.parsed = 0
        self.refused = 0  # dumps refused unread (a link outside, too large...): not cached
        # Rows waiting for `flush` (one executemany each per batch).
        self.dump_rows: list[tuple[str, store.CachedDump]] = []
        self.article_rows: list[store.ArticleRow] = []
        # (old id, new id, edited): a dump read again that now gives another article (an
        # edit: its bytes changed; or a new parser version), whose story keeps what the old
        # one had (see `flush`).
        self.renamed: list[tuple[str, str, bool]] = []

    def count_holders(self, found: Collection[str]) -> None:
        """Count the cached dumps giving each article: those `found` this run, and those
        outside its folders (`build PATH`). One gone since gives none: a story corrected
        as its other copy is removed is that story corrected (its item id and page stay)."""
        for key, entry in self.cache.items():
            if entry.article_id and (key in found or os.path.exists(key)):
                self.holders[entry.article_id] += 1

    def signature(self, path: str, shown: str) -> _Signature | DumpError:
        """The stat signature of a dump (taken before it is read), or why it cannot be read."""
        try:
            st, link = self.links.stat(path, source=shown)
        except DumpError as exc:
            return exc
        if link:
            self.checked_links.add(path)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def pin(self, path: str, st: _Signature) -> load.DumpPin | None:
        """What reading `path` must find: the file `signature` checked (None: links are not
        checked here), so that a dump swapped for a link after the check is not read."""
        return self.links.pin(path, st[0], st[1], path in self.checked_links)

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

    def read(self, path: str, key: str, shown: str, st: _Signature) -> Read:
        """Read (and parse when needed) in this process; DumpError when unreadable."""
        return read_and_parse(
            path,
            shown,
            self.cache.get(key),
            max_bytes=self.max_bytes,
            tz=self.tz,
            pin=self.pin(path, st),
        )

    def add(
        self,
        path: str,
        key: str,
        shown: str,
        st: _Signature | DumpError,
        read: Read | DumpError | None = None,
    ) -> None:
        """Sync the dump at `path` (cache key `key`, shown to the user as `shown`).

        `st` is its signature from `signature`; `read` what reading it gave when that was
        done already (by a worker), else it is read here when the cache cannot vouch.
        """
        if isinstance(st, DumpError):  # unreadable: not cached, retried next run
            self.refused += 1
            self._skip(st)
            return
        entry = self.vouched(key, st)
        row = None
        if entry is None:
            self.read_count += 1
            try:
                got = read if read is not None else self.read(path, key, shown, st)
            except DumpError as exc:
                got = exc
            if isinstance(got, DumpError):  # unreadable or too large: not cached
                self.refused += 1
                self._skip(got)
                return
            old = self.cache.get(key)
            entry, row = self._record(key, st, got), got.row
            if old is not None and old.article_id is not None:
                self.holders[old.article_id] -= 1
            if entry.article_id is not None:
                self.holders[entry.article_id] += 1
            if (
                old is not None
                and old.article_id is not None
                and entry.article_id is not None
                and old.article_id != entry.article_id
                # An article stored before this run from another dump is a story of its own
                # (two dumps swapped, a dump now a copy of another): it keeps its id and
                # page. One first stored this run (a duplicate's new id) is not.
                and (
                    self.sources.get(entry.article_id) in (None, shown)
                    or entry.article_id in self.created
                )
            ):
                edited = old.content_hash != entry.content_hash
                self.renamed.append((old.article_id, entry.article_id, edited))
        if entry.article_id is None:
            self._skip(decode_error(shown, entry.error or "rejected"))
            return
        if entry.article_id in self.ids:
            self.duplicates += 1
            self._merge_copy(path, shown, entry.article_id, row, self.pin(path, st))
            return
        # The first path in sorted order owns the stored record: parse again when the
        # record came from another dump (the owner changed, or the store lost it).
        if row is None and self.sources.get(entry.article_id) != shown:
            try:
                data = load.read_dump(
                    path, max_bytes=self.max_bytes, source=shown, pin=self.pin(path, st)
                )
                self.read_count += 1
                self.parsed += 1
                row = store.article_row(*load.parse_dump_with_body(data, source=shown, tz=self.tz))
            except DumpError as exc:
                self._skip(exc)
                return
        self.ids.add(entry.article_id)
        if row is not None:
            # self.sources holds every stored id: no need to ask the store whether it is new.
            if row.id not in self.sources:
                self.new += 1
                self.created.add(row.id)
            self.sources[row.id] = shown
            if self._slugs is None:
                self._slugs = store.read_article_slugs(self.db)
            slug = self._slugs.get(row.id)
            if slug is not None and slug != row.slug:  # a published URL never changes
                article = store.decode_article(row.record, _text(row.body))
                row = store.article_row(replace(article, slug=slug))
            self._put(row)

    def _put(self, row: store.ArticleRow) -> None:
        """Queue `row` for `flush`, replacing a row for the same article queued before."""
        self.touched.add(row.id)
        index = self.pending.get(row.id)
        if index is None:
            self.pending[row.id] = len(self.article_rows)
            self.article_rows.append(row)
        else:
            self.article_rows[index] = row

    def _merge_copy(
        self,
        path: str,
        shown: str,
        article_id: str,
        row: store.ArticleRow | None,
        pin: load.DumpPin | None,
    ) -> None:
        """Fill the stored article in with what another copy of it (the dump at `path`) adds.

        Only when either copy was parsed this run: otherwise the stored record has both.
        """
        if row is None and article_id not in self.touched:
            return
        try:
            if row is None:  # the first copy changed: this one must be merged in again
                data = load.read_dump(path, max_bytes=self.max_bytes, source=shown, pin=pin)
                self.read_count += 1
                self.parsed += 1
                other = load.parse_dump(data, source=shown, tz=self.tz)
            else:
                other = store.decode_article(row.record, _text(row.body))
        except DumpError as exc:
            self._skip(exc)
            return
        index = self.pending.get(article_id)
        if index is not None:
            kept = self.article_rows[index]
            current = store.decode_article(kept.record, _text(kept.body))
        else:
            found = store.get_article(self.db, article_id)
            if found is None:
                return
            current = found
        merged = load.merge_copies(current, other)
        if merged != current:
            self._put(store.article_row(merged))

    def flush(self) -> None:
        """Write the rows `add` gathered (inside the caller's transaction)."""
        store.write_dumps(self.db, self.dump_rows)
        store.upsert_rows(self.db, self.article_rows, now=self.now)
        if self.renamed:
            # The same dump is the same story: the digest it went out in (not mailed again),
            # when it was first seen (its place among undated articles), its feed id (one
            # item in readers) and its page (its URL) stay with it.
            # An old article another dump still gives (a copy of it corrected) is still its
            # own story: its feed id and page stay with it, not with the corrected copy.
            shared = {old for old, _new, _edited in self.renamed if self.holders[old] > 0}
            store.carry_over(self.db, self.renamed, now=self.now, shared=shared)
            self.renamed.clear()
        self.dump_rows.clear()
        self.article_rows.clear()
        self.pending.clear()

    def _record(self, key: str, st: _Signature, got: Read) -> store.CachedDump:
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
        self.dump_rows.append((key, entry))
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
            read=self.read_count,
            parsed=self.parsed,
        )


# A dump to sync: path, cache key (absolute path), path shown, signature, must it be read.
_Item = tuple[str, str, str, "_Signature | DumpError", bool]
# A dump to read: path, cache key, path shown, and what the read must find (`_Sync.pin`).
_Todo = tuple[str, str, str, "load.DumpPin | None"]


class _Signer:
    """Takes the dumps' signatures in path order, as far as they are asked for.

    `items` gives them to the sync loop; `todo` gives the dumps to read, ahead of it. Each
    is handed over once and then forgotten: what is held is what lies ahead of the loop.
    """

    def __init__(self, sync: _Sync, found: Sequence[str], cwd: str) -> None:
        self._sync = sync
        self._found = found
        self._cwd = cwd
        self._signed = 0  # dumps signed so far
        self._items: deque[_Item] = deque()  # signed, not yet handed to `items`
        self._todo: deque[_Todo] = deque()  # to read, not yet handed to `todo`
        self._todo_signed = 0  # dumps found to read so far

    def _sign_next(self) -> bool:
        """Sign the next dump; False when all are signed."""
        if self._signed == len(self._found):
            return False
        text = self._found[self._signed]
        self._signed += 1
        key = text if os.path.isabs(text) else os.path.join(self._cwd, text)
        shown = _shown(text, self._cwd)
        st = self._sync.signature(text, shown)
        must_read = not isinstance(st, DumpError) and self._sync.vouched(key, st) is None
        self._items.append((text, key, shown, st, must_read))
        if must_read and not isinstance(st, DumpError):
            self._todo.append((text, key, shown, self._sync.pin(text, st)))
            self._todo_signed += 1
        return True

    def count_todo(self, enough: int) -> int:
        """How many dumps must be read, counting no further than `enough`."""
        while self._todo_signed < enough and self._sign_next():
            pass
        return self._todo_signed

    def todo(self) -> Iterator[_Todo]:
        """The dumps to read (path, key, shown, pin), in path order, signing as it goes."""
        while self._todo or self._sign_todo():
            yield self._todo.popleft()

    def _sign_todo(self) -> bool:
        """Sign on up to the next dump to read; False when none is left."""
        before = self._todo_signed
        return self.count_todo(before + 1) > before

    def items(self, count: int) -> list[_Item]:
        """The next `count` signed dumps (fewer at the end)."""
        while len(self._items) < count and self._sign_next():
            pass
        return [self._items.popleft() for _ in range(min(count, len(self._items)))]


# A machine without a battery-backed clock boots at 1970-01-01; nothing is dated before this.
CLOCK_SET_BY = datetime(2000, 1, 1, tzinfo=UTC)


def check_clock(now: datetime) -> None:
    """Refuse a clock that was never set (ClockError, exit 75): new articles with no publish
    time are stored as first seen `now`, for good, and one first seen in 1970 would never
    be new enough for a digest."""
    if now < CLOCK_SET_BY:
        raise ClockError(
            f"this machine's clock reads {now.astimezone(UTC):%Y-%m-%d}, before "
            f"{CLOCK_SET_BY:%Y-%m-%d}: it is not set. Set it (NTP) and run again; articles "
            "with no publish time are dated by it."
        )


def sync_articles(
    settings: Settings,
    db: Database,
    *,
    now: datetime,
    paths: Sequence[Path] | None = None,
    progress: Progress | None = None,
    pool: BuildPool | None = None,
    tuning: BuildTuning | None = None,
    allow_empty: bool = False,
) -> SyncResult:
    """Bring the store up to date with the dumps under `paths` (default: paths.seeds).

    Dumps are taken in sorted path order; when two give the same Article.id the
    first one wins and the others count as duplicates. A rejected dump is logged
    as one warning (`path: reason`) and counted; the run goes on. New articles
    get first_seen_at = `now`. A dump whose stat signature (else content hash)
    and parser version match the cache is not parsed again. Raises InputError
    for a missing path, and for folders holding no dump at all while earlier runs
    stored some (an unmounted share would empty the site), unless `allow_empty`. Many
    dumps to read are read and parsed by worker processes (one per core: `pool`, else a
    pool of its own), the results still taken in path order; `tuning` (else the pool's)
    says how many are many.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    check_clock(now)
    roots = list(paths) if paths else [settings.paths.seeds]
    found = sorted(set(load.find_dump_paths(roots)))
    total = len(found)
    store.backfill_teasers(db)  # once, for articles stored before teasers were linked
    sync = _Sync(settings, db, now=now, roots=roots)
    if not found and sync.cache and not allow_empty:
        shown = ", ".join(str(root) for root in roots)
        raise InputError(
            f"{shown}: no dumps (*.txt) found, while earlier builds read "
            f"{len(sync.cache)}; refusing to empty the site.",
            hint="Check the folder (an unmounted share, a wrong path?). To empty the site "
            "on purpose, run `syndicate build --allow-empty`.",
        )
    cwd = os.getcwd()
    sync.count_holders({text if os.path.isabs(text) else os.path.join(cwd, text) for text in found})
    signer = _Signer(sync, found, cwd)
    reads = own_pool = None
    # Signatures are taken as the dumps are needed, each before its dump is read (a write
    # after it shows up next run); they also tell which dumps must be read: those the
    # cache cannot vouch for. With enough of those, the workers start on the first ones
    # while this process signs the rest.
    tuning = tuning or (pool.tuning if pool is not None else BuildTuning())
    if tuning.use_workers(signer.count_todo(max(tuning.parallel_min, 1))):
        if pool is None:
            pool = own_pool = BuildPool(None, settings.paths.output, tuning=tuning)
        reads = pool.reads(sync.cache, signer.todo(), settings)
    try:
        batch = _SYNC_BATCH[db.dialect]
        with store.sync_cache(db):
            for start in range(0, total, batch):
                for done, (path, key, shown, st, must_read) in enumerate(
                    signer.items(batch), start + 1
                ):
                    read = next(reads) if reads is not None and must_read else None
                    sync.add(path, key, shown, st, read)
                    # Its cache entry is used up (the signing and the reads, ahead of this
                    # loop, took theirs): what stays in the cache are the dumps not found.
                    sync.cache.pop(key, None)
                    if progress is not None:
                        progress(done, total)
                # Only the writing holds the write lock, not the reading and parsing before
                # it: a sign-up or `send` waits for one batch's rows at most.
                if sync.dump_rows or sync.article_rows:
                    with db.transaction():
                        sync.flush()
    finally:
        if reads is not None:
            reads.close()
        if own_pool is not None:
            own_pool.close()
    gone = [key for key in sync.cache if not os.path.exists(key)]
    if gone:
        with db.transaction():
            store.delete_dumps(db, gone)
    if progress is not None and not total:
        progress(0, 0)
    result = sync.result()
    log.info(
        "%d dumps: %d parsed, %d taken from the cache, %d refused unread; %d articles, %d new",
        total,
        sync.parsed,
        total - sync.parsed - sync.refused,
        sync.refused,
        result.articles,
        result.new,
    )
    return result
