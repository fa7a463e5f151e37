"""The provider events a job route fetches, bounded: every call is made now, with the
server's provider key, so a project token polling it could otherwise fill the API's
threadpool and spend the fleet's provider rate limit.

Each fetch has a short timeout (``api_events_timeout_s``), its answer is kept a few
seconds per job (``api_events_cache_s``; a provider error too, so a failing provider is
not asked again at once), and at most ``api_events_concurrency`` fetches run at a time:
one more is refused at once (``Busy``, a 503 with Retry-After) rather than queued.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from orchestrator import jobs as job_ops
from orchestrator.config import Settings
from orchestrator.db.models import Job
from orchestrator.errors import ProviderError
from orchestrator.providers.base import RemoteEvent
from orchestrator.providers.http import time_limit

#: Jobs whose answer is kept at once; more clears the oldest half (one polled job never
#: grows the cache, and a burst of many jobs is bounded).
MAX_CACHED = 1024

Answer = list[RemoteEvent] | ProviderError


class Busy(Exception):
    """Too many provider event fetches are running; try again in ``retry_after_s``."""

    retry_after_s = 1


class ProviderEvents:
    """Fetches a job's provider events under the bounds above (one per API process)."""

    def __init__(self, settings: Settings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.clock = settings, clock
        self._slots = threading.BoundedSemaphore(settings.api_events_concurrency)
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], tuple[float, Answer]] = {}

    def fetch(self, job: Job, limit: int) -> list[RemoteEvent]:
        """The job's newest events (see job_ops.provider_events); raises ProviderError or
        Busy."""
        key = (job.id, limit)
        answer = self._cached(key)
        if answer is None:
            if not self._slots.acquire(blocking=False):
                raise Busy(f"too many provider event requests are in flight; try again in "
                           f"{Busy.retry_after_s} s")
            try:
                answer = self._ask(job, limit)
            finally:
                self._slots.release()
            self._keep(key, answer)
        if isinstance(answer, ProviderError):
            raise answer.with_traceback(None)  # a cached error must not grow its traceback
        return answer

    def _ask(self, job: Job, limit: int) -> Answer:
        try:
            with time_limit(self.settings.api_events_timeout_s):
                return job_ops.provider_events(self.settings, job, limit)
        except ProviderError as exc:
            return exc

    def _cached(self, key: tuple[str, int]) -> Answer | None:
        with self._lock:
            found = self._cache.get(key)
        return found[1] if found is not None and found[0] > self.clock() else None

    def _keep(self, key: tuple[str, int], answer: Answer) -> None:
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                for old in sorted(self._cache, key=lambda k: self._cache[k][0]
                                  )[:MAX_CACHED // 2]:
                    del self._cache[old]
            self._cache[key] = (self.clock() + self.settings.api_events_cache_s, answer)
