"""Build edge: what an unchanged rebuild holds in memory, per article (docs/performance.md:
peak RSS < 300 MB at 100,000 dumps)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from syndicate.config import Settings
from syndicate.publish import BuildTuning, run_build
from syndicate.store import Database
from tests.plugins.postgres import open_store

pytestmark = pytest.mark.usefixtures("store")

ARTICLES = 4_000
# Python memory (traced) an unchanged rebuild may add at its peak, per article, fixed costs
# included: 2.4 KB when it held second copies of page paths, slugs and fingerprints, and
# every dump's signature after the sync (313 MB RSS at 100,000 dumps); 1.6-2.0 KB since.
BUDGET_PER_ARTICLE = 2_150
# Words for titles about as long as a real one (90 characters, Vietnamese).
WORDS = "tỉnh Quảng Trị hội nghị tổng kết công tác phát triển kinh tế xã hội đồng bào".split()


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = open_store(settings.paths.database)
    yield database
    database.close()


def _write_dumps(folder: Path, count: int) -> None:
    for n in range(count):
        words = [WORDS[(n * 7 + i * 3) % len(WORDS)] for i in range(16)]
        title = " ".join(words).capitalize() + f" số {n}"
        day, month = 1 + n % 28, 1 + (n // 28) % 12
        text = (
            f"{title}\n{day:02d}/{month:02d}/2024 {8 + n % 12:02d}:{n % 60:02d}\n"
            f"QTO - Sáng nay, {' '.join(reversed(words))}.\n"
            f"Đoạn thân bài của tin {n}: {' '.join(words)}.\nTrúc Phương\n"
        )
        (folder / f"{n:05d}.txt").write_text(text, encoding="utf-8")


def test_an_unchanged_rebuild_holds_one_copy_of_what_each_article_needs(
    settings: Settings, db: Database, now: datetime
) -> None:
    """Each article's texts are held once: no second copy of its page path, slug or
    fingerprint, no table of all page paths beside the new ones, no signatures of dumps
    already synced (each of these was 5-25 MB at 100,000 dumps)."""
    _write_dumps(settings.paths.seeds, ARTICLES)
    tuning = BuildTuning(parallel_min=10**9)  # one process: its memory is all traced here
    first = run_build(settings, db, now=now)
    assert first.articles == ARTICLES
    run_build(settings, db, now=now, tuning=tuning)  # the templates and caches warm
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        again = run_build(settings, db, now=now, tuning=tuning)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert (again.written, again.parsed, again.rendered) == (0, 0, 0)
    assert peak / ARTICLES < BUDGET_PER_ARTICLE, f"{peak / ARTICLES:.0f} bytes an article"
