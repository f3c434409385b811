"""Web: the sign-ups' confirmation mails, sent after the response on a thread of its own.

A sign-up is stored before the page answers (the store does the same one write for
every address state), so nothing is lost after a 200. Whether a confirmation mail is
sent depends on the state (new, pending, confirmed, left): if that ran before the
response, or on the event loop serving the other requests, the time a response (or the
next request) takes would tell whether an address is on the list. So the mail goes to a
worker thread running an event loop of its own: the mailer lives there (SMTP or outbox).
Every sign-up's mail is rendered and signed there, sent or not (web.signup): the thread
shares the interpreter lock with the loop, so work done for some states only slowed the
next requests for those.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

from syndicate.send import Mailer

log = logging.getLogger(__name__)

# Confirmation mails waiting or in progress at once; more are dropped (logged; the
# sign-up itself is stored, and signing up again after the re-send window mails again).
MAX_PENDING_SIGNUPS = 1000
# How long shutdown waits for confirmation mails in progress before giving up on them.
DRAIN_SECONDS = 30.0


class SignupWorker:
    """An event loop on a thread of its own; owns the mailer, sends confirmation mails.

    `submit` never blocks the caller. `stop` waits (up to `drain_seconds`) for the
    jobs in progress, closes the mailer on the worker's loop, and ends the thread.
    """

    def __init__(
        self,
        mailer: Mailer,
        *,
        max_pending: int = MAX_PENDING_SIGNUPS,
        drain_seconds: float = DRAIN_SECONDS,
    ) -> None:
        self.mailer = mailer
        self.max_pending = max_pending
        self.drain_seconds = drain_seconds
        self._lock = threading.Lock()
        self._jobs: set[Future[None]] = set()
        # Made by start(): an app that never starts (its listener failed) leaves nothing open.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="syndicate-signups", daemon=True
        )
        self._thread.start()

    def submit(self, job: Coroutine[Any, Any, None]) -> bool:
        """Run `job` on the worker's loop; False (and the job dropped) when too many wait."""
        with self._lock:
            if self._loop is None or len(self._jobs) >= self.max_pending:
                job.close()
                log.warning(
                    "subscribe: %s confirmation mails in progress; this one was dropped",
                    len(self._jobs),
                )
                return False
            future = asyncio.run_coroutine_threadsafe(self._guard(job), self._loop)
            self._jobs.add(future)
        future.add_done_callback(self._forget)
        return True

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._jobs.discard(future)

    @staticmethod
    async def _guard(job: Coroutine[Any, Any, None]) -> None:
        # Nobody awaits a job: anything it raises must be logged here, not lost.
        try:
            await job
        except Exception:
            log.exception("subscribe: a confirmation mail failed")

    def pending(self) -> int:
        """How many jobs are waiting or in progress."""
        with self._lock:
            return len(self._jobs)

    def stop(self) -> None:
        """Finish the jobs in progress (bounded), close the mailer, end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            try:
                job.result(timeout=self.drain_seconds)
            except TimeoutError:
                job.cancel()
                log.warning("subscribe: a confirmation mail still going at shutdown was abandoned")
            except Exception:  # already logged by _guard; a cancelled job lands here too
                log.debug(
                    "subscribe: a confirmation mail ended with an error at shutdown", exc_info=True
                )
        try:
            asyncio.run_coroutine_threadsafe(self.mailer.aclose(), loop).result(
                timeout=self.drain_seconds
            )
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=self.drain_seconds)
            if not thread.is_alive():
                loop.close()
