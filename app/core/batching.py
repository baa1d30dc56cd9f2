"""Dynamic batching: concurrent requests for one model share onnxruntime calls.

A few worker threads per model each take every request waiting in the queue (FIFO, up to
``max_batch_samples`` samples, at least one request), scores all their signals together
(windows of equal length from different requests run in one call), then finishes each
request with its own slice of the results. Under light load a request runs at once; under
heavy load requests that arrive during a run share the next one. ``max_wait`` (counted from
the first arrival) can trade latency for bigger batches. The queue is bounded: a full queue
refuses new requests with ``Overloaded`` instead of growing.

A signal's result does not depend on its batch: windows are cut the same way whatever the
company, and onnxruntime computes each row of a batch independently.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core.errors import Overloaded
from app.core.windows import Float32Array

Score = Callable[[Sequence[npt.NDArray[np.floating]]], list[Float32Array]]
Finish = Callable[[list[Float32Array]], Any]


@dataclass
class _Job:
    signals: Sequence[npt.NDArray[np.floating]]
    finish: Finish
    samples: int
    arrived: float = field(default_factory=time.monotonic)
    future: Future[Any] = field(default_factory=Future)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    signals: int = 0
    dropped: int = 0  # requests whose caller gave up (deadline) before they ran


class Batcher:
    def __init__(
        self,
        score: Score,
        *,
        max_batch_samples: int,
        max_queue: int,
        max_wait: float = 0.0,
        name: str = "model",
        workers: int = 1,
    ) -> None:
        if max_batch_samples < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch_samples and max_queue must be >= 1 and max_wait >= 0")
        self.score = score
        self.max_batch_samples = max_batch_samples
        self.max_queue = max_queue
        self.max_wait = max_wait
        self.stats = BatchStats()
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # Several workers run batches side by side (each onnxruntime call on its own core).
        self._threads = [
            threading.Thread(target=self._loop, name=f"batcher-{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def submit(self, signals: Sequence[npt.NDArray[np.floating]], finish: Finish) -> Future[Any]:
        """Queue a request; its future gets ``finish(curves)`` or the error that stopped it."""
        job = _Job(signals, finish, int(sum(np.size(s) for s in signals)))
        with self._cond:
            if self._closed:
                raise Overloaded("the service is shutting down; retry on another instance")
            if len(self._jobs) >= self.max_queue:
                raise Overloaded(
                    f"{len(self._jobs)} requests are waiting for this model (the limit is "
                    f"{self.max_queue}); retry shortly"
                )
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _take(self) -> list[_Job]:
        batch: list[_Job] | None = []
        while batch == []:  # every job taken had been cancelled: wait for more
            batch = self._take_some()
        return batch or []

    def _take_some(self) -> list[_Job] | None:
        """The next batch (empty if every waiting job was cancelled); None once closed and empty."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            if self.max_wait > 0:
                deadline = self._jobs[0].arrived + self.max_wait
                while not self._closed and sum(j.samples for j in self._jobs) < self.max_batch_samples:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            batch: list[_Job] = []
            total = 0
            while self._jobs and (not batch or total + self._jobs[0].samples <= self.max_batch_samples):
                job = self._jobs.popleft()
                # A cancelled future (its request timed out) is skipped, never run; a running
                # one can no longer be cancelled, so its result can always be set.
                if not job.future.set_running_or_notify_cancel():
                    self.stats.dropped += 1
                    continue
                batch.append(job)
                total += job.samples
            return batch

    def _loop(self) -> None:
        while batch := self._take():
            self._process(batch)

    def _process(self, batch: list[_Job]) -> None:
        signals = [s for job in batch for s in job.signals]
        try:
            curves = self.score(signals)
            if len(curves) != len(signals):
                raise RuntimeError(f"model returned {len(curves)} results for {len(signals)} signals")
        except Exception as exc:
            if len(batch) > 1:  # find the request that fails; the others must not suffer
                for job in batch:
                    self._process([job])
            else:
                batch[0].future.set_exception(exc)
            return
        with self._cond:
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.signals += len(signals)
        start = 0
        for job in batch:
            mine = curves[start : start + len(job.signals)]
            start += len(job.signals)
            try:
                job.future.set_result(job.finish(mine))
            except Exception as exc:
                job.future.set_exception(exc)
