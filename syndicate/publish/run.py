"""Build: write the feeds and pages into the output folder, and run the whole build.

Only pages whose inputs changed are rendered (fingerprints in the `pages` table);
each article page loads its article from the store when it is rendered. Pages an
earlier build wrote that no longer belong to the site are deleted.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from syndicate import feeds, i18n, model, text
from syndicate.config import Settings, base_url, site_templates_dir
from syndicate.errors import DumpError, StoreError, SyndicateError
from syndicate.feeds import ENTRY_ERRORS, FeedInfo, build_feed
from syndicate.model import Article, OrderKey, StoryLink, newest_published, order_key
from syndicate.publish.hashing import digest as _hash
from syndicate.publish.pool import BuildPool, BuildTuning, IndexJob, render_page
from syndicate.publish.staging import (
    Stager,
    close_staging,
    open_staging,
    page_fingerprint,
    remove_dead_temp_files,
)
from syndicate.publish.sync import Progress, check_clock, sync_articles
from syndicate.publish.writer import PageWriter
from syndicate.site import (
    IndexEntry,
    SiteInfo,
    SiteRenderer,
    assign_slugs,
    index_pages,
)
from syndicate.store import Database, teasers
from syndicate.store import articles as store
from syndicate.text import one_line, shorten
from syndicate.urls import FEED_FILES, article_path, article_url, page_slug

# The stage's logger.
log = logging.getLogger("syndicate.publish")


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
    read: int = 0  # dumps read (the cache could not vouch for them by their stat signature)
    parsed: int = 0  # dumps parsed (the others came from the cache)
    rendered: int = 0  # feeds and pages rendered after the sync (inputs changed or file gone)


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


def _order_key(summary: store.ArticleSummary, tz: tzinfo, newest: datetime | None) -> OrderKey:
    # The digest's order (an undated article after the dated ones of the day it was first
    # seen, or of the newest article's day): sort reversed.
    return order_key(
        summary.published,
        summary.precision,
        summary.first_seen_at,
        summary.id,
        tz=tz,
        newest=newest,
    )


# An article page's links: the story key of a teaser -> the article it advertises.
_Links = dict[str, StoryLink]


def _page_links(
    db: Database, summaries: Sequence[store.ArticleSummary], slugs: dict[str, str]
) -> tuple[dict[str, _Links], dict[str, str]]:
    """The links of every article page whose teasers advertise an article with a page, and
    what of them goes into the page's fingerprint (the targets' slugs and records)."""
    by_id = {s.id: s for s in summaries}
    links: dict[str, _Links] = {}
    parts: dict[str, list[str]] = {}
    for article_id, position, key, target_id in teasers.iter_links(db):
        target = by_id.get(target_id)
        if target is None or article_id not in by_id:  # no page: no link
            continue
        slug = slugs[target_id]
        links.setdefault(article_id, {})[key] = StoryLink(
            target.id,
            article_path(slug),
            target.title,
            target.published,
            target.precision,
            target.first_seen_at,
        )
        parts.setdefault(article_id, []).append(f"{position}:{slug}:{target.record_hash}")
    return links, {article_id: ";".join(part) for article_id, part in parts.items()}


def run_build(
    settings: Settings,
    db: Database,
    *,
    now: datetime,
    paths: Sequence[Path] | None = None,
    progress: Progress | None = None,
    tuning: BuildTuning | None = None,
    allow_empty: bool = False,
) -> BuildSummary:
    """Sync the store with the dumps, then write feeds and pages into paths.output.

    Writes rss.xml, atom.xml, feed.json, articles/<slug>.html and index.html
    (+ page/<n>.html archive pages, page/1.html the oldest) for the articles found in
    the dumps. Writes are atomic and files whose bytes did not change are not
    rewritten; pages and feeds whose inputs did not change are not even rendered.
    Pages an earlier build wrote that no longer belong to the site are deleted.
    `tuning` says when worker processes take part; the output is the same either way.
    Dump folders with no dump at all, when earlier builds read some, are refused
    (InputError) unless `allow_empty`: the site would be emptied.
    """
    check_clock(now)  # before the output folder is touched
    tuning = tuning or BuildTuning()
    started = time.perf_counter()
    output = settings.paths.output
    info = _site_info(settings)
    renderer = SiteRenderer(info, site_templates_dir())
    writer = PageWriter(output, *store.read_page_fingerprints(db), list_after=tuning.list_after)
    remove_dead_temp_files(output)  # before this build writes any of its own
    staging = _open_staging(output)
    stager = Stager(renderer, staging, writer.old) if staging is not None else None
    try:
        with BuildPool(renderer, output, stager, tuning=tuning) as pool:
            sync = sync_articles(
                settings,
                db,
                now=now,
                paths=paths,
                progress=progress,
                pool=pool,
                allow_empty=allow_empty,
            )
            summaries = [s for s in store.iter_summaries(db) if s.id in sync.article_ids]
            newest = newest_published(summaries)
            summaries.sort(key=lambda s: _order_key(s, settings.site.tz, newest), reverse=True)
            # An article with a page keeps its path: a published URL stays put.
            kept = {
                s.id: s.slug if slug == s.slug else slug  # one copy of the text when the same
                for s in summaries
                if s.page_path and (slug := page_slug(s.page_path))
            }
            slugs = assign_slugs(
                ((s.id, s.slug, s.published, s.first_seen_at) for s in summaries), kept=kept
            )
            # Before a page file is written, forget every page that moves or goes: a page
            # file may be about to hold another article, and a reader meanwhile (a digest)
            # must show such an article unlinked, never linked to that other one's page.
            with db.transaction():
                store.write_page_paths(
                    db, _PagePaths(slugs, {i for i, slug in kept.items() if slugs[i] == slug})
                )
            try:
                left_out = _write_pages(
                    settings, db, writer, renderer, info, summaries, slugs, pool, stager
                )
            except BaseException:
                writer.abandon()
                raise
            writer.finish()
    finally:
        if staging is not None:
            close_staging(staging)

    # Where each article's page now is: the one place it is decided. Recorded once the pages
    # are written and before stale ones are deleted, so a stored path always names a file.
    with db.transaction():
        store.write_page_paths(
            db, _PagePaths(slugs, {s.id for s in summaries if s.id not in left_out.without_page})
        )
    removed = _remove_stale(output, writer)
    with db.transaction():
        store.delete_page_fingerprints(db, (rel for rel in writer.old if rel not in writer.new))
        store.write_page_fingerprints(
            db,
            (
                (rel, fp, *_stamp_columns(writer.new_stamps.get(rel)))
                for rel, fp in writer.new.items()
                if writer.old.get(rel) != fp or writer.stamps.get(rel) != writer.new_stamps[rel]
            ),
        )
    for error in left_out.errors:
        log.warning("%s", error)
    return BuildSummary(
        articles=sync.articles - left_out.pages,
        duplicates=sync.duplicates,
        skipped=sync.skipped + len(left_out.errors),
        written=writer.written,
        unchanged=writer.unchanged,
        seconds=time.perf_counter() - started,
        errors=sync.errors + left_out.errors,
        removed=removed,
        read=sync.read,
        parsed=sync.parsed,
        rendered=left_out.rendered,
    )


class _PagePaths(Mapping[str, str]):
    """The page path of each article in `ids` (by its slug), made as it is asked for: the
    store compares them one by one, and 100,000 paths held at once are 13 MB."""

    def __init__(self, slugs: Mapping[str, str], ids: Set[str]) -> None:
        self._slugs = slugs
        self._ids = ids

    def __getitem__(self, article_id: str) -> str:
        if article_id not in self._ids:
            raise KeyError(article_id)
        return article_path(self._slugs[article_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def _open_staging(output: Path) -> Path | None:
    try:
        return open_staging(output)
    except OSError as exc:  # pages are then rendered after the sync, where errors show
        log.debug("%s: no staging folder: %s", output, exc.strerror or exc)
        return None


@dataclass(frozen=True, slots=True)
class _LeftOut:
    """Articles a stage could not render, each named by its dump: `pages` of them are
    missing from the whole site (page, index pages and feeds), the others from the feeds."""

    errors: tuple[DumpError, ...] = ()
    pages: int = 0
    rendered: int = 0  # feeds and pages rendered
    without_page: frozenset[str] = frozenset()  # the ids of the `pages` articles


_LEFT_OUT_HINT = "Fix the dump or move it out of the dump folder; the rest was built."


def _left_out(db: Database, failed: dict[str, str], what: str) -> list[DumpError]:
    """One DumpError per article id in `failed` (id -> why), named by its dump, in order."""
    if not failed:
        return []
    sources = store.read_article_sources(db)
    errors = [
        DumpError(
            sources.get(article_id, f"article {article_id}"),
            f"{what} cannot be rendered ({reason}); the article is left out.",
            hint=_LEFT_OUT_HINT,
        )
        for article_id, reason in failed.items()
    ]
    return sorted(errors, key=lambda e: e.path)


def _write_pages(
    settings: Settings,
    db: Database,
    writer: PageWriter,
    renderer: SiteRenderer,
    info: SiteInfo,
    summaries: Sequence[store.ArticleSummary],
    slugs: dict[str, str],
    pool: BuildPool,
    staging: Stager | None,
) -> _LeftOut:
    """Render and queue the article pages, then the index pages and the feeds.

    An article page the parse workers staged with the same fingerprint is moved into place
    instead of being rendered. An article whose page cannot be rendered is left out of the
    index pages and feeds too; one that cannot go in a feed is left out of the feeds. When
    the workers are running, they render the index pages while this process does the feeds.
    """
    failed, rendered = _write_article_pages(db, writer, renderer, summaries, slugs, pool, staging)
    errors = _left_out(db, failed, "its page")
    if failed:
        summaries = [s for s in summaries if s.id not in failed]

    index_jobs: list[IndexJob] = []
    index_fingerprints: list[str] = []
    for page in index_pages(len(summaries), info.page_size):
        chunk = summaries[page.start : page.stop]
        # What the page shows of each article is in its record: slug and record hash say
        # it. Its links depend on where it stands: the index on the newest archive page's
        # number, an archive page on whether it is the newest.
        where = (
            f"index:{page.archives}"
            if page.archive is None
            else (f"{page.archive}:{page.archive == page.archives}")
        )
        key = "\0".join(
            [renderer.fingerprint, where] + [f"{slugs[s.id]}:{s.record_hash}" for s in chunk]
        )
        fingerprint = _hash(key.encode())
        if writer.fresh(page.rel, fingerprint):
            continue
        entries = [
            IndexEntry(
                s.id,
                slugs[s.id],
                s.title,
                s.published,
                s.precision,
                s.author,
                s.language,
                s.credit,
            )
            for s in chunk
        ]
        index_jobs.append((page.rel, page.archive, page.archives, entries))
        index_fingerprints.append(fingerprint)
    index_futures = pool.start_index_pages(index_jobs) if pool.started and index_jobs else None

    feeds_failed, feeds_rendered = _write_feeds(settings, db, writer, summaries, slugs)
    errors += _left_out(db, feeds_failed, "its feed entry")

    if index_futures is not None:
        pool.finish_index_pages(writer, index_jobs, index_fingerprints, index_futures)
    else:
        for (rel, archive, archives, entries), fingerprint in zip(
            index_jobs, index_fingerprints, strict=True
        ):
            data = renderer.render_index(entries, archive=archive, archives=archives)
            writer.write(rel, data, fingerprint, fsync=archive is None)
    return _LeftOut(
        tuple(errors), len(failed), rendered + len(index_jobs) + feeds_rendered, frozenset(failed)
    )


def _write_article_pages(
    db: Database,
    writer: PageWriter,
    renderer: SiteRenderer,
    summaries: Sequence[store.ArticleSummary],
    slugs: dict[str, str],
    pool: BuildPool,
    staging: Stager | None,
) -> tuple[dict[str, str], int]:
    """Render and queue the article pages that changed, their teasers linked to the pages of
    the articles they advertise; return the articles whose page could not be rendered
    (id -> why) and how many pages were rendered."""
    links, link_parts = _page_links(db, summaries, slugs)
    todo: list[tuple[str, str, str, str]] = []  # rel, slug, article id, fingerprint
    for summary in summaries:
        slug = slugs[summary.id]
        rel = article_path(slug)
        if rel == summary.page_path:  # the page stays put: one copy of its path is held
            rel = summary.page_path
        fingerprint = page_fingerprint(
            renderer.fingerprint, slug, summary.record_hash, link_parts.get(summary.id, "")
        )
        if writer.fresh(rel, fingerprint):
            continue
        stamp = pool.staged.pop(fingerprint, None)
        if (
            staging is not None
            and stamp is not None
            and writer.adopt(rel, staging.staged(fingerprint), fingerprint, stamp)
        ):
            continue
        todo.append((rel, slug, summary.id, fingerprint))
    # The pages teasers link to go first: a teaser advertising an article whose page cannot
    # be rendered (left out of the site) is then shown unlinked. Such a page's inputs are in
    # the linking page's fingerprint, so the outcome is the same at every build.
    targets = {link.id for found in links.values() for link in found.values()}
    first = [job for job in todo if job[2] in targets]
    rest = [job for job in todo if job[2] not in targets]
    failed = _render_pages(db, writer, renderer, pool, first, links)
    if not failed:
        failed.update(_render_pages(db, writer, renderer, pool, rest, links))
        return failed, len(todo)
    kept = {
        article_id: {key: link for key, link in found.items() if link.id not in failed}
        for article_id, found in links.items()
    }
    failed.update(_render_pages(db, writer, renderer, pool, rest, kept))
    # Rare: a page rendered first links to another rendered first that failed. Rendered
    # again without that link, it replaces the first copy (counted once).
    for rel, slug, article_id, fingerprint in first:
        if article_id in failed or kept.get(article_id) == links.get(article_id):
            continue
        data = render_page(renderer, _record(db, article_id), slug, kept.get(article_id))
        if isinstance(data, bytes):  # else the first copy, which did render, stays
            writer.replace(rel, data, fingerprint)
    return failed, len(todo)


def _render_pages(
    db: Database,
    writer: PageWriter,
    renderer: SiteRenderer,
    pool: BuildPool,
    todo: Sequence[tuple[str, str, str, str]],
    links: Mapping[str, Mapping[str, StoryLink]],
) -> dict[str, str]:
    """Render and queue the (rel, slug, article id, fingerprint) article pages, their teasers
    linked by `links` (by article id); the articles whose page could not be rendered."""
    if pool.tuning.use_workers(len(todo)):
        writer.drain()  # the writer thread sits idle while the workers are forked
        return pool.render_articles(functools.partial(_record, db), writer, todo, links)
    failed: dict[str, str] = {}
    for rel, slug, article_id, fingerprint in todo:
        data = render_page(renderer, _record(db, article_id), slug, links.get(article_id))
        if isinstance(data, str):
            failed[article_id] = data
        else:
            writer.write(rel, data, fingerprint, fsync=False)
    return failed


def _record(db: Database, article_id: str) -> tuple[str, str | None]:
    record = store.get_record(db, article_id)
    if record is None:  # pragma: no cover - the sync just stored it
        raise SyndicateError(f"{db.path}: article {article_id!r} vanished during the build.")
    return record


def _top_articles(
    db: Database, chosen: Sequence[store.ArticleSummary], failed: dict[str, str]
) -> Iterator[Article]:
    """The chosen articles from the store; a damaged record goes into `failed` instead."""
    for summary in chosen:
        try:
            article = store.get_article(db, summary.id)
        except StoreError as exc:
            failed[summary.id] = exc.message
            continue
        if article is not None:
            yield article


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.cache
def _feeds_code() -> str:
    """What the feed bytes depend on besides their inputs: the code that writes them (the
    feeds module, and the model and text modules whose helpers shape an entry: its photo
    notes, credit line, cuts) and the libraries under it (a change to any of them renders
    the feeds again). The strings an entry adds are in the feeds' key as they are held."""
    sources = [Path(m.__file__ or "").read_bytes() for m in (feeds, model, text)]
    return _hash(repr((feeds.LIBRARY_VERSIONS, sources)).encode())


def _write_feeds(
    settings: Settings,
    db: Database,
    writer: PageWriter,
    summaries: Sequence[store.ArticleSummary],
    slugs: dict[str, str],
) -> tuple[dict[str, str], int]:
    """Render and queue the feeds that changed; return the articles left out of them
    (id -> why) and how many feeds were rendered."""
    limit = settings.feeds.limit
    info = _feed_info(settings)
    chosen = summaries[:limit]
    # The feeds show the chosen articles' records at their page URLs, under their stories'
    # ids, dated by them (and by when their text was revised) or, when none has a date, by
    # when the newest was first seen: with the same settings and code,
    # the same inputs give the same bytes, and the feeds are not rendered again.
    key = "\0".join(
        # The strings as this process holds them (the words an entry adds: "Theo …").
        [_feeds_code(), repr(i18n.STRINGS["pages"]), repr(info), str(limit)]
        + [
            f"{slugs[s.id]}:{s.record_hash}:{s.first_seen_at.isoformat()}:{s.story_id}:"
            f"{s.revised_at.isoformat() if s.revised_at else ''}"
            for s in chosen
        ]
    )
    fingerprint = _hash(key.encode())
    stale = {kind: name for kind, name in FEED_FILES.items() if not writer.fresh(name, fingerprint)}
    if not stale:
        return {}, 0
    failed: dict[str, str] = {}
    top = list(_top_articles(db, chosen, failed))
    urls = {a.id: article_url(info.base_url, slugs[a.id]) for a in top}
    # The feed's updated time is the newest publish date. When no article in it has one,
    # it is when syndicate first saw the newest of them: stored, so a rebuild gives the
    # same bytes; never the clock. An empty feed uses the Unix epoch for the same reason.
    ids = {a.id for a in top}
    seen = [s.first_seen_at for s in chosen if s.id in ids]
    fallback = max(seen) if seen else _EPOCH
    render = functools.partial(
        build_feed,
        now=fallback.astimezone(UTC),
        info=info,
        limit=limit,
        page_urls=urls,
        first_seen={s.id: s.first_seen_at for s in chosen if s.id in ids},
        story_ids={s.id: s.first_id for s in chosen if s.id in ids and s.first_id},
        revised={s.id: s.revised_at for s in chosen if s.id in ids and s.revised_at},
        # The index's newest: an article left out does not move the undated ones.
        newest=newest_published(chosen),
    )
    feeds = _render_feeds(render, top, list(stale), failed)
    if failed:  # not fresh next time: the articles left out are reported again
        fingerprint = _hash(f"{fingerprint}:left out".encode())
    for kind, data in feeds.items():
        writer.write(stale[kind], data, fingerprint, fsync=True)
    return failed, len(stale)


def _render_feeds(
    render: Callable[..., bytes], top: list[Article], kinds: list[str], failed: dict[str, str]
) -> dict[str, bytes]:
    """`render(articles, kind=kind)` for each kind. An article whose entry cannot be built
    is left out (into `failed`, id -> why) and the feeds built without it; a failure no
    single article causes is raised."""
    while True:
        try:
            return {kind: render(top, kind=kind) for kind in kinds}
        except ENTRY_ERRORS:
            bad = {}
            for article in top:
                try:
                    for kind in kinds:
                        render([article], kind=kind)
                except ENTRY_ERRORS as exc:
                    bad[article.id] = shorten(one_line(f"{type(exc).__name__}: {exc}"), limit=200)
            if not bad:
                raise
            failed.update(bad)
            top = [a for a in top if a.id not in bad]


def _stamp_columns(stamp: store.PageStamp | None) -> tuple[int | None, int | None]:
    return (None, None) if stamp is None else store.stamp_parts(stamp)


def _remove_stale(output: Path, writer: PageWriter) -> int:
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
