"""Build: the worker processes (forked, one per core) that parse dumps and render article pages.

Work goes out in chunks, at most `_CHUNKS_IN_FLIGHT` at a time, so memory stays
bounded; results are taken back in order, so a build with workers gives what it
gives alone. A worker that dies turns into a WorkerError.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from syndicate.build.reading import _Failed, _Read, _start_reader, _work
from syndicate.build.staging import Stager
from syndicate.build.writer import _Writer
from syndicate.config import Settings, site_templates_dir
from syndicate.errors import DumpError, OutputError, SyndicateError, WorkerError
from syndicate.model import Article
from syndicate.output import write_atomic
from syndicate.site import SiteInfo, SiteRenderer
from syndicate.store import articles as store

_T = TypeVar("_T")

# Reading and parsing go to worker processes when at least this many dumps need it.
_PARALLEL_MIN = 512
_MAX_WORKERS = 4
_CHUNK = 64  # dumps per worker task
_CHUNKS_IN_FLIGHT = 8  # tasks out at a time: bounds the results held in memory


def _parallel_reads(
    cache: Mapping[str, store.CachedDump],
    todo: list[tuple[Path, str, str]],
    settings: Settings,
    stager: Stager | None = None,
) -> Generator[_Read | DumpError, None, None]:
    """Read and parse `todo` (path, key, shown) in worker processes, yielding in order.

    At most `_CHUNKS_IN_FLIGHT` chunks are out at a time, so memory stays bounded
    however many dumps there are. A `stager` renders each parsed article's page.
    """
    workers = min(_MAX_WORKERS, os.cpu_count() or 1)
    chunks = (
        [(path, shown, cache.get(key)) for path, key, shown in todo[i : i + _CHUNK]]
        for i in range(0, len(todo), _CHUNK)
    )
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_start_reader, initargs=(stager,)
    ) as pool:
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
    """A worker's result; WorkerError (exit 1) when the worker process died."""
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise WorkerError(
            f"build: a worker process stopped unexpectedly ({exc}).",
            hint="Run the build again; if it keeps failing, check the memory available.",
        ) from exc


def _use_workers(count: int) -> bool:
    return (
        count >= _PARALLEL_MIN
        and (os.cpu_count() or 1) > 1
        and "fork" in multiprocessing.get_all_start_methods()
    )


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
    records: Callable[[str], str],
    writer: _Writer,
    info: SiteInfo,
    todo: list[tuple[str, str, str, str]],
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
            work = [(rel, slug, records(article_id)) for rel, slug, article_id, _fp in chunk]
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
