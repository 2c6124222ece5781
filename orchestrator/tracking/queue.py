"""The trial's MLflow write queue (runs inside the Ray worker): training never waits for the server.

``BufferedRunLog`` delivers a trial's writes in order from one background thread and keeps a write
that failed at the head of the queue until the server answers again; ``EpochLog`` is the per-epoch
write it carries, which logs each epoch at most once in the run's history also when a reply was lost.
The writes themselves are ``orchestrator.tracking.runs``'.
"""

from __future__ import annotations

import sys
import threading
from collections import deque

from orchestrator.tracking.runs import log_epoch, logged_epochs

__all__ = ["BufferedRunLog", "EpochLog"]


class BufferedRunLog:
    """A trial's MLflow writes, delivered in order by one background thread (runs in the Ray worker).

    Training never waits for the tracking server: ``submit(fn, *args)`` queues ``fn(client, run_id,
    *args)`` and returns. A write that fails (server down, restarting, unreachable) stays at the head
    of the queue and is retried every ``retry_every`` seconds, so nothing is lost or reordered while the
    server is away. ``close(timeout)`` waits until the queue is delivered; what is still queued then
    is dropped (and reported): the driver backfills a finished trial's history and result from its
    directory when the run does not say ``done``. Each write must be idempotent (``log_epoch`` is
    guarded by ``logged_epochs``), since a write whose reply was lost is retried.
    """

    def __init__(self, client, run_id: str, retry_every: float = 1.0, say=None):
        self.client, self.run_id, self.retry_every = client, run_id, retry_every
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.failed_writes = 0          # attempts that failed and were retried
        self.last_error: str | None = None
        self._queue: deque = deque()
        self._cv = threading.Condition()
        self._closing = self._cancelled = False
        self._thread = threading.Thread(target=self._deliver, name=f"mlflow-{run_id[:8]}", daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> None:
        with self._cv:
            self._queue.append((fn, args))
            self._cv.notify_all()

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._queue)

    def _deliver(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if self._cancelled or not self._queue:
                    return
                fn, args = self._queue[0]
            try:
                fn(self.client, self.run_id, *args)
            except Exception as e:  # noqa: BLE001 -- any failure: keep the write and retry it
                if self.failed_writes == 0 or self.last_error != f"{type(e).__name__}: {e}"[:300]:
                    self.say(f"MLflow write failed ({type(e).__name__}: {str(e)[:200]}); buffering and retrying")
                self.failed_writes += 1
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                with self._cv:
                    self._cv.wait_for(lambda: self._cancelled, timeout=self.retry_every)
                continue
            with self._cv:
                self._queue.popleft()
                self._cv.notify_all()

    def close(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every queued write; True when all were delivered."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            delivered = self._cv.wait_for(lambda: not self._queue, timeout=timeout)
            if not delivered:
                self._cancelled = True
                self._cv.notify_all()
                self.say(f"MLflow unreachable for {timeout:.0f}s: {len(self._queue)} write(s) of run {self.run_id} "
                         f"dropped here; the driver backfills them from the trial directory")
        self._thread.join(timeout=5)
        return delivered


class EpochLog:
    """``log_epoch`` for a trial's ``BufferedRunLog``: each epoch at most once in the run's history.

    The epochs the run holds are asked from the server before the first write and again after any
    write that raised (its reply may have been lost after it landed); in between, the answer is
    trusted. A restarted trial therefore never logs an epoch twice, and a re-sent write (same
    metrics, same timestamp) is one the store drops."""

    def __init__(self):
        self.known: set[int] | None = None  # epochs the run holds; None: ask the server

    def __call__(self, client, run_id: str, epoch: int, metrics: dict, timestamp: int) -> None:
        known = self.known if self.known is not None else logged_epochs(client, run_id)
        self.known = None  # in doubt until this write is answered
        if int(epoch) not in known:
            log_epoch(client, run_id, epoch, metrics, timestamp)
        self.known = known | {int(epoch)}
