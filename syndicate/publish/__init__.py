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

Modules: `sync` (dumps -> store), `reading` (one dump, cached or parsed),
`run` (feeds and pages -> output folder, and `run_build`), `writer` (the
background page writer), `pool` (the worker processes; `BuildTuning` says when they
take part).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import syndicate

if TYPE_CHECKING:
    from syndicate.publish.pool import PARALLEL_MIN, BuildTuning
    from syndicate.publish.reading import parse_version
    from syndicate.publish.run import BuildSummary, run_build
    from syndicate.publish.sync import Progress, SyncResult, check_clock, sync_articles

# Each name, and the module that defines it, loaded when first used: `send --dry-run` and
# `digest` read the dumps (`sync_articles`) without loading the feeds and their libraries
# (feedgen, lxml, dateutil), which only `run_build` needs.
_HOME = {
    "PARALLEL_MIN": "syndicate.publish.pool",
    "BuildTuning": "syndicate.publish.pool",
    "parse_version": "syndicate.publish.reading",
    "BuildSummary": "syndicate.publish.run",
    "run_build": "syndicate.publish.run",
    "Progress": "syndicate.publish.sync",
    "SyncResult": "syndicate.publish.sync",
    "check_clock": "syndicate.publish.sync",
    "sync_articles": "syndicate.publish.sync",
}

__getattr__ = syndicate.lazy_attributes(globals(), _HOME)


__all__ = [
    "PARALLEL_MIN",
    "BuildSummary",
    "BuildTuning",
    "Progress",
    "SyncResult",
    "check_clock",
    "parse_version",
    "run_build",
    "sync_articles",
]
