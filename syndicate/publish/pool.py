"""Build: the worker processes (forked, one per core) that parse dumps and render pages.

One pool serves a whole build. It is forked when first needed, parses the dumps
(a stager renders and stages each new article's page as it goes), then renders
what the build still needs, index pages and article pages whose slug changed,
while this process moves the staged pages into place. Work goes out in chunks,
at most `_CHUNKS_IN_FLIGHT` at a time, so memory stays bounded; results are
taken back in order, so a build with workers gives what it gives alone. A
worker that dies turns into a WorkerError.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from zoneinfo import ZoneInfo

from syndicate import interrupts
from syndicate.config import Settings
from syndicate.errors import DiskFullError, DumpError, OutputError, SyndicateError, WorkerError
from syndicate.load import DumpPin
from syndicate.model import RENDER_ERRORS, StoryLink
from syndicate.output import write_atomic
from syndicate.publish.reading import Read, read_and_parse
from syndicate.publish.staging import Stager
from syndicate.publish.writer import PageWriter
from syndicate.site import IndexEntry, SiteRenderer
from syndicate.store import articles as store
from syndicate.text import one_line, shorten

_T = TypeVar("_T")

# Reading and parsing go to worker processes when at least this many dumps need it.
PARALLEL_MIN = 512
_MAX_WORKERS = 4
_CHUNK = 64  # dumps or article pages per worker task
_INDEX_CHUNK = 16  # index pages per worker task
_CHUNKS_IN_FLIGHT = 8  # tasks out at a time: bounds the results held in memory

# A task's outcome when it failed: (message, hint, disk full?) of its SyndicateError, which
# does not pickle whole.
_TaskError = tuple[str, str | None, bool]
# An index page to render: rel, archive number (None: index.html), archive count, entries.
IndexJob = tuple[str, int | None, int, list[IndexEntry]]


@dataclass(frozen=True, slots=True)
class _WorkerState:
    """What every worker needs, inherited through fork: no pickling, no template compiling."""

    renderer: SiteRenderer | None  # None in a pool that only parses
    output: Path
    stager: Stager | None


# The state of a worker process (set by `_start_worker` in each one).
_STATE: _WorkerState | None = None


def _start_worker(state: _WorkerState) -> None:
    global _STATE
    _STATE = state


def _state() -> _WorkerState:
    if _STATE is None:  # pragma: no cover - the pool's initializer sets it
        raise RuntimeError("build tasks run in a worker started by _start_worker")
    return _STATE


# One unit of work for a parse worker: path, shown path, cache entry, what to find (pin).
_Job = tuple[str, str, "store.CachedDump | None", "DumpPin | None"]
# A read failure, as plain values (DumpError does not pickle): path, reason, line, hint.
_Failed = tuple[str, str, int | None, str | None]


def _read_chunk(jobs: list[_Job], max_bytes: int, timezone: str) -> list[Read | _Failed]:
    """Run `read_and_parse` on a chunk of jobs, in a worker process (with its stager)."""
    tz = ZoneInfo(timezone)
    stager = _state().stager
    out: list[Read | _Failed] = []
    for path, shown, cached, pin in jobs:
        try:
            out.append(
                read_and_parse(
                    path, shown, cached, max_bytes=max_bytes, tz=tz, stager=stager, pin=pin
                )
            )
        except DumpError as exc:
            out.append((exc.path, exc.reason, exc.line, exc.hint))
    return out


@dataclass(frozen=True, slots=True)
class BuildTuning:
    """How a build spreads its work: the same site and store whatever the values.

    `parallel_min`: worker processes (forked, one per core) read and parse the dumps, and
    render article pages, when at least this many need it (1: always, where fork and a
    second core exist; a huge number: never). `list_after`: past this many staged pages
    moved into place, a page's folder is listed once rather than each target looked for.
    """

    parallel_min: int = PARALLEL_MIN
    list_after: int = 256

    def use_workers(self, count: int) -> bool:
        """Whether `count` dumps or pages to do go to worker processes."""
        return (
            count >= max(self.parallel_min, 1)
            and (os.cpu_count() or 1) > 1
            and "fork" in multiprocessing.get_all_start_methods()
        )


def _chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """`items` in lists of `size` (the last may be shorter), taken lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _worker_error(exc: BrokenProcessPool) -> WorkerError:
    return WorkerError(
        f"build: a worker process stopped unexpectedly ({exc}).",
        hint="Run the build again; if it keeps failing, check the memory available.",
    )


def _result(future: Future[_T]) -> _T:
    """A worker's result; WorkerError (exit 1) when the worker process died."""
    try:
        return interrupts.result(future)
    except BrokenProcessPool as exc:
        raise _worker_error(exc) from exc


def _submit(pool: ProcessPoolExecutor, function: Callable[..., _T], *args: Any) -> Future[_T]:
    """Send a task; WorkerError (exit 1) when a worker died before (the pool is broken)."""
    try:
        with interrupts.held():  # a signal inside the pool's locks would leave them taken
            return pool.submit(function, *args)
    except BrokenProcessPool as exc:
        raise _worker_error(exc) from exc


def _renderer() -> tuple[SiteRenderer, Path]:
    state = _state()
    if state.renderer is None:  # pragma: no cover - render tasks go to pools that render
        raise RuntimeError("this pool was started without a renderer")
    return state.renderer, state.output


def render_page(
    renderer: SiteRenderer,
    record: tuple[str, str | None],
    slug: str,
    links: Mapping[str, StoryLink] | None = None,
) -> bytes | str:
    """The page of the stored article `record` under `slug`, its teasers linked by `links`,
    or why that article's content cannot be rendered (one line): the build then leaves it
    out."""
    try:
        return renderer.render_article(store.decode_article(*record), slug=slug, links=links)
    except RENDER_ERRORS as exc:
        return shorten(one_line(f"{type(exc).__name__}: {exc}"), limit=200)


def _render_articles(
    chunk: list[tuple[str, str, tuple[str, str | None], Mapping[str, StoryLink] | None]],
) -> list[bool | str] | _TaskError:
    """Render and write (rel, slug, (record, body), links) article pages: whether each file
    changed, or why its article could not be rendered."""
    renderer, output = _renderer()
    changed: list[bool | str] = []
    try:
        for rel, slug, record, links in chunk:
            data = render_page(renderer, record, slug, links)
            if isinstance(data, str):
                changed.append(data)
            else:
                changed.append(write_atomic(output / rel, data, fsync=False))
    except SyndicateError as exc:
        return (exc.message, exc.hint, isinstance(exc, DiskFullError))
    return changed


def _render_index_pages(jobs: list[IndexJob]) -> list[bool] | _TaskError:
    """Render and write index pages: whether each file changed."""
    renderer, output = _renderer()
    changed = []
    try:
        for rel, archive, archives, entries in jobs:
            data = renderer.render_index(entries, archive=archive, archives=archives)
            changed.append(write_atomic(output / rel, data, fsync=archive is None))
    except SyndicateError as exc:
        return (exc.message, exc.hint, isinstance(exc, DiskFullError))
    return changed


def _checked(result: list[_T] | _TaskError) -> list[_T]:
    if isinstance(result, tuple):
        error = DiskFullError if result[2] else OutputError
        raise error(result[0], hint=result[1])
    return result


class BuildPool:
    """The worker processes of one build, forked on first use and kept until `close`.

    Without a first use nothing is forked: a build with little to do stays in one process.
    """

    def __init__(
        self,
        renderer: SiteRenderer | None,
        output: Path,
        stager: Stager | None = None,
        *,
        tuning: BuildTuning | None = None,
    ) -> None:
        self._state = _WorkerState(renderer, output, stager)
        self.tuning = tuning or BuildTuning()
        self._pool: ProcessPoolExecutor | None = None
        # Pages the workers staged: fingerprint -> stamp of the staged file.
        self.staged: dict[str, store.PageStamp] = {}

    @property
    def started(self) -> bool:
        return self._pool is not None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=min(_MAX_WORKERS, os.cpu_count() or 1),
                mp_context=multiprocessing.get_context("fork"),
                initializer=_start_worker,
                initargs=(self._state,),
            )
        return self._pool

    def close(self) -> None:
        """Stop the workers (tasks not started are dropped)."""
        if self._pool is not None:
            with interrupts.held():
                self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ordered(
        self, tasks: Iterator[tuple[Callable[..., _T], tuple[Any, ...]]]
    ) -> Generator[_T, None, None]:
        """Run `tasks` (function, args) in the workers, at most `_CHUNKS_IN_FLIGHT` out at a
        time, and yield their results in order."""
        pool = self._executor()
        pending: deque[Future[_T]] = deque()
        try:
            for function, args in itertools.islice(tasks, _CHUNKS_IN_FLIGHT):
                pending.append(_submit(pool, function, *args))
            while pending:
                result = _result(pending.popleft())
                following = next(tasks, None)
                if following is not None:
                    pending.append(_submit(pool, following[0], *following[1]))
                yield result
        finally:
            with interrupts.held():
                for future in pending:
                    future.cancel()

    def reads(
        self,
        cache: Mapping[str, store.CachedDump],
        todo: Iterable[tuple[str, str, str, DumpPin | None]],
        settings: Settings,
    ) -> Generator[Read | DumpError, None, None]:
        """Read and parse `todo` (path, key, shown, pin) in the workers, yielding in order; the
        stager renders each parsed article's page. `todo` is taken lazily, a chunk at a
        time, as the workers need more."""
        tasks = (
            (
                _read_chunk,
                (
                    [(path, shown, cache.get(key), pin) for path, key, shown, pin in chunk],
                    settings.load.max_bytes,
                    settings.site.timezone,
                ),
            )
            for chunk in _chunks(todo, _CHUNK)
        )
        staged = self.staged
        for results in self._ordered(tasks):
            for got in results:
                if not isinstance(got, Read):  # a failure, as plain values
                    yield DumpError(got[0], got[1], line=got[2], hint=got[3])
                else:
                    if got.staged is not None:
                        staged[got.staged[0]] = got.staged[1]
                    yield got

    def render_articles(
        self,
        records: Callable[[str], tuple[str, str | None]],
        writer: PageWriter,
        todo: Sequence[tuple[str, str, str, str]],
        links: Mapping[str, Mapping[str, StoryLink]],
    ) -> dict[str, str]:
        """Render and write (rel, slug, article id, fingerprint) article pages in the workers,
        with the `links` of their teasers (by article id); this process reads the records
        and keeps the counts, in page order. Returns the articles whose page could not be
        rendered: id -> why."""
        chunks = list(_chunks(todo, _CHUNK))
        tasks = (
            (
                _render_articles,
                ([(rel, slug, records(id_), links.get(id_)) for rel, slug, id_, _fp in chunk],),
            )
            for chunk in chunks
        )
        failed: dict[str, str] = {}
        for chunk, result in zip(chunks, self._ordered(tasks), strict=True):
            for (rel, _slug, article_id, fingerprint), changed in zip(
                chunk, _checked(result), strict=True
            ):
                if isinstance(changed, str):
                    failed[article_id] = changed
                else:
                    writer.record(rel, fingerprint, changed=changed)
        return failed

    def start_index_pages(self, jobs: Sequence[IndexJob]) -> list[Future[list[bool] | _TaskError]]:
        """Send index pages to the workers now; `finish_index_pages` counts them."""
        pool = self._executor()
        return [_submit(pool, _render_index_pages, chunk) for chunk in _chunks(jobs, _INDEX_CHUNK)]

    @staticmethod
    def finish_index_pages(
        writer: PageWriter,
        jobs: Sequence[IndexJob],
        fingerprints: Sequence[str],
        futures: list[Future[list[bool] | _TaskError]],
    ) -> None:
        """Wait for the index pages sent by `start_index_pages` and count them."""
        changed = [flag for future in futures for flag in _checked(_result(future))]
        for (rel, *_rest), fingerprint, flag in zip(jobs, fingerprints, changed, strict=True):
            writer.record(rel, fingerprint, changed=flag)
