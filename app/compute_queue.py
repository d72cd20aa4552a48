"""One process-wide queue for the comparisons of every session (no Streamlit here).

Eight people drawing at once on a 2-core server used to start eight comparisons at once, each with
its own threads: the cores were oversubscribed and everyone waited 4-9 s. Here every adaptation of
every session goes through one pool of ``workers`` threads (one per core) fed by one FIFO queue:

* a request (one session's comparison) is a list of jobs, queued together, so requests finish in the
  order they came and one request still uses every core;
* the queue is bounded (``max_requests`` waiting or running): beyond it :class:`QueueFull` is raised
  at once, and the page says the server is busy instead of piling up work nobody will see;
* each session has a latest request: a job whose request was superseded by the same session's newer
  one is skipped when its turn comes (:class:`Superseded`), so a quick series of drawings costs one
  comparison, not one per drawing;
* :meth:`Ticket.ahead` says how many requests are before this one, for the "queued (n ahead)" note.
"""

from __future__ import annotations

import contextvars
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Generic, TypeVar

Result = TypeVar("Result")


class QueueFull(RuntimeError):
    """Too many requests are waiting; the user is asked to try again shortly."""


class Superseded(RuntimeError):
    """The same session asked for something newer before this request's turn came."""


class Ticket(Generic[Result]):
    """One request's place in the queue and its jobs' futures (in the order given)."""

    def __init__(self, queue: ComputeQueue, request_id: int, session: str, futures: list[Future[Result]]) -> None:
        self.queue, self.request_id, self.session, self.futures = queue, request_id, session, futures

    def ahead(self) -> int:
        """Requests of other sessions queued or running before this one."""
        return self.queue.ahead(self.request_id)

    def done(self) -> bool:
        return all(future.done() for future in self.futures)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when every job has finished."""
        wait_futures(self.futures, timeout=timeout)
        return self.done()

    def results(self) -> list[Result]:
        """Every job's result (raises :class:`Superseded` if the request was dropped)."""
        return [future.result() for future in self.futures]

    def cancel(self) -> None:
        """Drop the jobs that have not started (the session went away or gave up waiting)."""
        self.queue.supersede(self.session, self.request_id)


class ComputeQueue:
    """A bounded FIFO of requests served by ``workers`` threads, shared by all sessions."""

    def __init__(self, workers: int, max_requests: int) -> None:
        self.workers = max(1, workers)
        self.max_requests = max(1, max_requests)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="compare")
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: OrderedDict[int, int] = OrderedDict()  # request id -> jobs not finished
        self._latest: dict[str, int] = {}  # session -> its newest request id
        self.skipped_jobs = 0
        """Jobs dropped because their request was superseded (tests and the load test read it)."""

    def submit(self, session: str, jobs: Sequence[Callable[[], Result]]) -> Ticket[Result]:
        """Queue one request of ``session`` (its jobs run in this order, ``workers`` at a time).

        Supersedes the session's earlier requests; raises :class:`QueueFull` when ``max_requests``
        other requests are waiting or running."""
        with self._lock:
            request_id = next(self._ids)
            previous = self._latest.get(session)
            if previous is not None:
                self._drop(previous)
            if len(self._pending) >= self.max_requests:
                raise QueueFull(f"{len(self._pending)} comparisons are already waiting")
            self._latest[session] = request_id
            self._pending[request_id] = len(jobs)
            if not jobs:
                self._finish(request_id)
        futures = [self._pool.submit(contextvars.copy_context().run, self._run, request_id, session, job)
                   for job in jobs]
        return Ticket(self, request_id, session, futures)

    def ahead(self, request_id: int) -> int:
        with self._lock:
            return sum(1 for other in self._pending if other < request_id)

    def pending(self) -> int:
        """Requests waiting or running."""
        with self._lock:
            return len(self._pending)

    def supersede(self, session: str, request_id: int) -> None:
        with self._lock:
            if self._latest.get(session) == request_id:
                del self._latest[session]
            self._drop(request_id)

    def _drop(self, request_id: int) -> None:
        """No longer counted as waiting; its jobs not yet started are skipped (lock held)."""
        self._pending.pop(request_id, None)

    def _finish(self, request_id: int) -> None:
        self._pending.pop(request_id, None)

    def _run(self, request_id: int, session: str, job: Callable[[], Any]) -> Any:
        with self._lock:
            live = request_id in self._pending and self._latest.get(session) == request_id
            if not live:
                self.skipped_jobs += 1
        if not live:
            raise Superseded(f"request {request_id} of session {session} was superseded")
        try:
            return job()
        finally:
            with self._lock:
                left = self._pending.get(request_id)
                if left is not None:
                    if left <= 1:
                        self._finish(request_id)
                    else:
                        self._pending[request_id] = left - 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
