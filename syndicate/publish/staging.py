"""Build: article pages rendered where the dump was parsed, staged until their slug is known.

A worker that parses a dump has the article in hand, so it renders its page there
and then (under the slug the article would keep if nothing collides) into a
private staging folder, named by the page's fingerprint. Once the slugs are
assigned, a page whose fingerprint matches is moved into place (one rename);
any other page is rendered as usual. This saves storing, loading and decoding
the article again for its page. The staging folder belongs to one build
process and is removed when that build ends, or by a later build when the
process that made it is gone (a build killed mid-run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from syndicate.model import RENDER_ERRORS, Article
from syndicate.output import remove_temp_files, remove_temp_files_in, write_new
from syndicate.publish.hashing import digest
from syndicate.site import SiteRenderer
from syndicate.store.articles import PageStamp, page_stamp
from syndicate.urls import article_path

STAGING_FOLDER = ".staging"
# The folders under paths.output syndicate writes pages into: the feeds and index, the
# article and archive pages, and `send`'s digest pages (cli.flow.DIGESTS_FOLDER).
WRITTEN_FOLDERS = ("", "articles", "page", "digests")

# The stage's logger.
log = logging.getLogger("syndicate.publish")


def page_fingerprint(
    renderer_fingerprint: str, slug: str, record_hash: str, links: str = ""
) -> str:
    """The fingerprint of an article page's inputs: templates and site, slug, stored record,
    and the pages its teasers link to (`links`, empty when none: the staged page's case)."""
    extra = f"\0{links}" if links else ""
    return digest(f"{renderer_fingerprint}\0{slug}\0{record_hash}{extra}".encode())


@dataclass(frozen=True, slots=True)
class Stager:
    """Renders pages of just-parsed articles into `folder` (used inside worker processes).

    `old` holds the fingerprints of the pages the last build wrote: a page that would
    come out the same is not rendered at all.
    """

    renderer: SiteRenderer
    folder: Path
    old: dict[str, str]

    def staged(self, fingerprint: str) -> str:
        # Spread over 16 subfolders by the first hex digit: workers creating files at the
        # same moment then seldom wait on the same folder's lock.
        return f"{self.folder}/{fingerprint[0]}/{fingerprint}.html"

    def stage(
        self, article: Article, record_hash: str, body: bytes | None = None
    ) -> tuple[str, PageStamp] | None:
        """Render `article`'s page under its own slug and stage it; best effort. `body` is
        the article's text as the loader returned it beside the article, if at hand.

        Returns the page's fingerprint and the stamp of its staged file (which the move
        into place keeps), or None when nothing was staged. A page that cannot be staged
        (a full disk, say) is simply rendered again later, where a failure is reported.
        """
        slug = article.slug
        fingerprint = page_fingerprint(self.renderer.fingerprint, slug, record_hash)
        if self.old.get(article_path(slug)) == fingerprint:
            return None
        try:
            data = self.renderer.render_article(article, slug=slug, from_loader=True, body=body)
        except RENDER_ERRORS:  # rendered again later, where the failure is reported
            return None
        try:
            mtime_ns = write_new(self.staged(fingerprint), data)
        except OSError:  # FileExistsError: a duplicate dump staged it
            return None
        return fingerprint, page_stamp(len(data), mtime_ns)


def remove_dead_temp_files(output: Path) -> int:
    """Delete the temp files that processes now gone (a killed build or `send`) left in the
    folders syndicate writes into; return how many. Cheap: one listing of each folder.

    A build killed before it made its staging folder, or a `send` killed while writing the
    digest page, leaves no other sign, so every build looks (`open_staging` walks the
    whole output folder only when a dead build's staging folder says one was killed)."""
    removed = sum(
        remove_temp_files_in(output / folder, alive=_alive_other) for folder in WRITTEN_FOLDERS
    )
    if removed:
        log.info("%s: removed %d temp files left by a killed process", output, removed)
    return removed


def open_staging(output: Path) -> Path:
    """Create this process's staging folder under `output`, after removing those left by
    builds that were killed (their process is gone) and those builds' temp files. Raises
    OSError."""
    root = output / STAGING_FOLDER
    if root.is_dir():
        dead = [entry for entry in root.iterdir() if entry.name.isdigit() and _dead(entry.name)]
        if dead:
            # Every build has a staging folder while it runs: one left behind says a build
            # was killed, maybe between creating a page's temp file and renaming it. The
            # folders go last, so a build killed while sweeping leaves the sign for the next.
            removed = remove_temp_files(output, alive=_alive_other, skip=STAGING_FOLDER)
            if removed:
                log.info("%s: removed %d temp files left by a killed build", output, removed)
        for entry in dead:
            shutil.rmtree(entry, ignore_errors=True)
    folder = root / str(os.getpid())
    folder.mkdir(parents=True)
    for digit in "0123456789abcdef":
        (folder / digit).mkdir()
    return folder


def close_staging(folder: Path) -> None:
    """Remove a staging folder and what is left in it (pages not taken)."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: another build is staging too
        folder.parent.rmdir()


def _dead(name: str) -> bool:
    """Whether the staging folder `name` (a pid) belongs to no running build: its process is
    gone, or it is ours from before (a dead build that had our pid: we have not made it)."""
    return not _alive_other(int(name))


def _alive_other(pid: int) -> bool:
    return pid != os.getpid() and _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
