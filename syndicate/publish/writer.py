"""Build: the page writer. Atomic writes on one background thread; unchanged pages are skipped.

A page is fresh when the fingerprint of its inputs matches the one stored by the
last build and its file is as that build left it (same size and modification time):
it is then neither rendered nor written. A page deleted or edited since is written again.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from syndicate.interrupts import held, result
from syndicate.output import move_into_place, write_atomic
from syndicate.store.articles import PageStamp, page_stamp

# Rendered pages waiting for the writer thread, at most (bounds the memory they hold).
_WRITES_IN_FLIGHT = 64


class PageWriter:
    """Writes pages under the output folder, skipping those whose fingerprint is unchanged.

    Page writes run on one background thread (file system calls release the GIL, so
    they overlap with rendering the next page); at most `_WRITES_IN_FLIGHT` pages wait
    in memory. `finish()` waits for them all and raises the first write error.
    """

    def __init__(
        self,
        output: Path,
        fingerprints: dict[str, str],
        stamps: dict[str, PageStamp] | None = None,
        *,
        list_after: int = 256,
    ) -> None:
        self.output = output
        # Staged pages moved into place before the folder is listed once rather than each
        # target looked for (a build that parsed a few dumps should not list 100,000 pages).
        self.list_after = list_after
        self.old = fingerprints
        self.stamps = stamps or {}  # how the last build left each page (size and mtime)
        self.new: dict[str, str] = {}
        self.new_stamps: dict[str, PageStamp | None] = {}
        self.written = 0
        self.unchanged = 0
        self._listings: dict[str, frozenset[str]] = {}
        self._adopted = 0
        self._root = os.fspath(output)  # plain text paths: 10,000 pages, no pathlib per page
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syndicate-write")
        self._pending: deque[tuple[str, str, Future[bool]]] = deque()

    def fresh(self, rel: str, fingerprint: str) -> bool:
        """True (and counted as unchanged) when `rel` was built from these inputs before
        and its file is still there."""
        recorded = self.old.get(rel)
        if recorded != fingerprint:
            return False
        stamp = self.stamps.get(rel)
        if stamp is None:  # recorded before stamps were kept: is the file there at all?
            if not self._exists(rel):
                return False
            stamp = self._stamp(rel)
        elif self._stamp(rel) != stamp:  # deleted, or edited since
            return False
        self.new[rel] = recorded  # the text already held, not a second copy of it
        self.new_stamps[rel] = stamp
        self.unchanged += 1
        return True

    def _stamp(self, rel: str) -> PageStamp | None:
        """The size and modification time of the page file now, or None when it is gone."""
        try:
            st = os.stat(f"{self._root}/{rel}")
        except OSError:
            return None
        return page_stamp(st.st_size, st.st_mtime_ns)

    def _exists(self, rel: str) -> bool:
        """Whether `rel` was a file when its folder was first looked at (one listing per
        folder rather than one stat per page)."""
        folder, _, name = rel.rpartition("/")
        names = self._listings.get(folder)
        if names is None:
            names = self._listings[folder] = _file_names(self.output / folder)
        return name in names

    def write(self, rel: str, data: bytes, fingerprint: str, *, fsync: bool) -> None:
        """Queue an atomic write of `data` to `rel`; counted once it is done."""
        with held():  # a signal inside the pool's locks would leave them taken
            future = self._pool.submit(write_atomic, self.output / rel, data, fsync=fsync)
        self._pending.append((rel, fingerprint, future))
        if len(self._pending) > _WRITES_IN_FLIGHT:
            self._settle()

    def replace(self, rel: str, data: bytes, fingerprint: str) -> None:
        """Write `rel` again, here and now, over a copy written earlier in this build (which
        was counted): the page is counted once."""
        self.drain()
        write_atomic(self.output / rel, data, fsync=False)
        self.new[rel] = fingerprint
        self.new_stamps[rel] = self._stamp(rel)

    def adopt(self, rel: str, staged: str, fingerprint: str, stamp: PageStamp) -> bool:
        """Move the finished file `staged` (whose stamp is `stamp`) to `rel` (atomic rename),
        here and now: a rename is too quick to be worth a trip to the writer thread. False
        when there is no such file."""
        # Past the first few, a page missing from its folder's listing is not looked for.
        self._adopted += 1
        absent = self._adopted > self.list_after and not self._exists(rel)
        changed = move_into_place(staged, f"{self._root}/{rel}", absent=absent)
        if changed is None:
            return False
        self.record(rel, fingerprint, changed=changed, stamp=stamp if changed else None)
        return True

    def _settle(self) -> None:
        rel, fingerprint, future = self._pending.popleft()
        self.record(rel, fingerprint, changed=result(future))

    def record(
        self, rel: str, fingerprint: str, *, changed: bool, stamp: PageStamp | None = None
    ) -> None:
        """Count a page written (elsewhere) from inputs with this fingerprint; `stamp` is its
        file's when known (else the file is looked at)."""
        if changed:
            self.written += 1
        else:
            self.unchanged += 1
        self.new[rel] = fingerprint
        self.new_stamps[rel] = stamp if stamp is not None else self._stamp(rel)

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
        with held():
            for _rel, _fingerprint, future in self._pending:
                future.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)


def _file_names(folder: Path) -> frozenset[str]:
    """The names of the regular files (or links to them) in `folder`; none if unreadable."""
    try:
        with os.scandir(folder) as entries:
            return frozenset(entry.name for entry in entries if entry.is_file())
    except OSError:
        return frozenset()
