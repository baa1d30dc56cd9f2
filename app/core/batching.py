"""Dynamic batching: concurrent requests for one model share onnxruntime calls.

A few worker threads per model each take every request waiting in the queue (FIFO, up to
``max_batch_samples`` samples, at least one request), score all their signals together
(windows of equal length from different requests run in one call), then finish each
request with its own slice of the results. Under light load a request runs at once; under
heavy load requests that arrive during a run share the next one.

The first worker takes any waiting request. The others (helpers) take requests only when a
full batch (``max_batch_samples``) is waiting or the oldest request has waited ``HELP_AFTER_S``
for the busy first worker, and they help with a long signal's calls (``map``). Many small
requests are then served by one worker in large batches, which leaves the other core to the
event loop: on 2 cores, 1×1024 requests at concurrency 32 ran about 10 % faster than with two
workers taking turns. Large requests still keep every worker busy. ``max_wait`` (counted from
the first arrival) can trade latency for bigger batches. The queue is bounded: a full queue
refuses new requests with ``Overloaded`` instead of growing.

A request too big for one onnxruntime call (a long signal: many windows) is scored in
several calls; ``Batcher.map`` lets idle workers take some of them, so one long signal uses
every worker instead of one. A waiting request is always taken before such help: a long
signal does not hold up short ones.

A caller that no longer wants a result (its deadline passed, its client left) calls
``give_up`` on the request's future: still queued, the request never runs; running, the
onnxruntime calls of its long signal not yet started are skipped, once every request of its
batch was given up (a batch still wanted by one request runs to its end).

``run_now`` scores a request in the calling thread instead, if every worker is idle and
nothing waits: for a lone small request the two hand-offs between threads (mostly each
thread waiting for the interpreter lock) cost about as much as its inference.

A request from an event loop comes with a waiter (an asyncio future of that loop): the worker
settles the waiters of a whole batch with one call into their loop, not one per request.

Each request is finished (its curves turned into its answer) by its own ``finish``, in the
worker. Requests whose finish is a ``Shared`` with the same function and context (the same
model's JSON answers) are finished in one call: peak picking and calibration then run once
over the curves of the whole batch instead of once per request. A failing shared call is
retried request by request, so one bad request fails alone.

A signal's result does not depend on its batch: windows are cut the same way whatever the
company, and onnxruntime computes each row of a batch independently.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from app.core.errors import Overloaded, ShuttingDown
from app.core.windows import Float32Array

HELP_AFTER_S = 0.02  # a helper takes requests that waited this long for the busy first worker

Score = Callable[[Sequence[npt.NDArray[np.floating]]], list[Float32Array]]
Finish = Callable[[list[Float32Array]], Any]
T = TypeVar("T")
R = TypeVar("R")


class Abandoned(Exception):
    """Every request of a batch was given up while it ran: its calls not yet started were
    skipped. Nobody waits for it; it only ends the batch early."""


class JobFuture(Future[Any]):
    """A queued request's future; ``give_up`` when its result is no longer wanted."""

    abandoned = False  # given up while it ran (set on the instance)
    queue: Batcher | None = None  # the batcher whose queue holds the request (set by ``submit``)

    def give_up(self) -> None:
        """Still queued: cancelled and taken out of the queue at once (its place under
        ``max_queue`` and its signals' memory freed), it never runs. Running: its onnxruntime
        calls not yet started are skipped if every request of its batch was given up."""
        if self.cancel():
            if self.queue is not None:
                self.queue._forget(self)
        else:
            self.abandoned = True


def _given_up(jobs: Sequence[_Job]) -> bool:
    return all(job.future.abandoned for job in jobs)


def _closed(signals: Sequence[npt.NDArray[np.floating]]) -> list[Float32Array]:
    """The scoring function of a closed batcher."""
    raise ShuttingDown("the service is shutting down; retry on another instance")


@dataclass(frozen=True, slots=True)
class Shared:
    """A request's finish that may share one call with other requests of its batch.

    ``run(context, [(arg, curves), ...])`` returns one result per pair, in order. Called with
    one request's curves, it finishes that request alone (so it is a ``Finish`` too).
    """

    run: Callable[[Any, list[tuple[Any, list[Float32Array]]]], list[Any]]
    context: Any
    arg: Any

    def __call__(self, curves: list[Float32Array]) -> Any:
        return self.run(self.context, [(self.arg, curves)])[0]


@dataclass
class _Job:
    signals: Sequence[npt.NDArray[np.floating]]
    finish: Finish
    samples: int
    arrived: float = field(default_factory=time.monotonic)
    future: JobFuture = field(default_factory=JobFuture)
    waiter: asyncio.Future[Any] | None = None  # an event loop's copy of ``future``


def _settle(jobs: list[_Job]) -> None:
    """On the event loop: copy each finished job's outcome into its waiter (unless cancelled)."""
    for job in jobs:
        waiter, future = job.waiter, job.future
        if waiter is None or waiter.done() or not future.done():  # never block the loop
            continue
        if future.cancelled():
            waiter.cancel()
        elif (error := future.exception(timeout=0)) is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(future.result(timeout=0))


@dataclass
class _Split:
    """The independent tasks of one ``Batcher.map`` call; state guarded by the batcher's lock."""

    fn: Callable[[Any], Any]
    items: list[Any]
    results: list[Any]
    claimed: int = 0  # tasks handed out (the next one to run is items[claimed])
    unfinished: int = 0  # tasks not finished (or never to run, after an error)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    owners: Sequence[_Job] = ()  # the batch whose scoring made this call (none: run_now's)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    signals: int = 0
    dropped: int = 0  # requests whose caller gave up (deadline, client gone) before they ran
    abandoned: int = 0  # requests given up while they ran, their remaining calls skipped
    helped: int = 0  # map tasks run by a worker other than the caller
    now: int = 0  # requests run by run_now in the caller's thread


class Admission:
    """A place of a batcher's queue held by a request whose body is read (``Batcher.admit``);
    ``release`` (or leaving the ``with`` block) gives it back, once."""

    def __init__(self, batcher: Batcher | None) -> None:
        self._batcher = batcher

    def release(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher._release()

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


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
        self._splits: deque[_Split] = deque()  # map calls with tasks left for idle workers
        self._waiting = 0  # workers waiting for work
        self._queued_samples = 0  # samples of the requests in self._jobs
        self._admitted = 0  # requests let in (``admit``) whose bodies are read, not yet queued
        self._first_waiting = False  # the first worker waits for work
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the first worker waits here (and close/submit use it)
        self._help = threading.Condition(lock)  # the helpers wait here
        self._closed = False
        self._local = threading.local()  # ``owners``: the batch a worker is scoring
        # Several workers run batches side by side (each onnxruntime call on its own core).
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"batcher-{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        return len(self._jobs)

    @property
    def idle(self) -> bool:
        """Every worker waits for work and nothing is queued."""
        return not (self._closed or self._jobs or self._splits) and self._waiting == len(self._threads)

    @property
    def first_worker(self) -> int | None:
        """The native thread id of the first worker, which takes any waiting request."""
        return self._threads[0].native_id

    def check_room(self) -> None:
        """Raise ``Overloaded`` if ``max_queue`` requests wait, counting those let in by ``admit``
        whose bodies are still read or decoded. ``submit`` decides under the lock."""
        waiting = len(self._jobs) + self._admitted
        if waiting >= self.max_queue:
            raise Overloaded(
                f"{waiting} request{'s are' if waiting != 1 else ' is'} waiting for this model "
                f"(the limit is {self.max_queue}); retry shortly"
            )

    def admit(self) -> Admission:
        """Let a request in before its body is read, or raise ``Overloaded``: it holds a place
        of the queue until its ``Admission`` is released, just before it is queued (or when it
        fails first). Without it every request that came while the queue had room read its
        body, however many: memory followed the connections, not ``max_queue``."""
        with self._cond:
            self.check_room()
            self._admitted += 1
        return Admission(self)

    def _release(self) -> None:
        with self._cond:
            self._admitted -= 1

    def submit(
        self,
        signals: Sequence[npt.NDArray[np.floating]],
        finish: Finish,
        waiter: asyncio.Future[Any] | None = None,
    ) -> JobFuture:
        """Queue a request; its future gets ``finish(curves)`` or the error that stopped it.

        ``waiter``: an event loop's future that gets the same outcome. The waiters of one
        batch are settled by one call into their loop, where ``asyncio.wrap_future`` makes one
        per request. A caller that no longer wants the result calls the future's ``give_up``.
        """
        job = _Job(signals, finish, sum(s.size for s in signals), waiter=waiter)
        job.future.queue = self
        with self._cond:
            if self._closed:
                raise ShuttingDown("the service is shutting down; retry on another instance")
            self.check_room()
            self._jobs.append(job)
            self._queued_samples += job.samples
            self._cond.notify()  # the first worker, if it waits
            if self._queued_samples >= self.max_batch_samples or (
                len(self._jobs) == 1 and not self._first_waiting
            ):
                # A full batch waits, or the first worker is busy: a helper takes the batch, or
                # times the wait of this oldest request.
                self._help.notify()
        return job.future

    def _forget(self, future: JobFuture) -> None:
        """Take a cancelled request out of the queue, unless a worker already took it (and
        counted it dropped)."""
        with self._cond:
            for i, job in enumerate(self._jobs):
                if job.future is future:
                    del self._jobs[i]
                    self._queued_samples -= job.samples
                    self.stats.dropped += 1
                    return

    def run_now(self, signals: Sequence[npt.NDArray[np.floating]], finish: Finish) -> tuple[bool, Any]:
        """``(True, finish(curves))`` computed in this thread if every worker is idle and no
        request waits, else ``(False, None)`` (then ``submit``). Same scoring as a batch of one;
        errors are raised here."""
        with self._cond:
            if not self.idle:
                return False, None
            self.stats.now += 1
            score = self.score  # read before ``close`` may let go of it
        curves = score(signals)
        if len(curves) != len(signals):
            raise RuntimeError(f"model returned {len(curves)} results for {len(signals)} signals")
        return True, finish(curves)

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the threads. Once they have stopped the batcher lets
        go of ``score``: a scoring function that refers back to the batcher (to ``map``) and
        holds a model is then freed with the batcher as soon as nothing else refers to it, not
        at the cyclic collector's next full pass (a model's memory, reload after reload)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._help.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        if not any(thread.is_alive() for thread in self._threads):
            with self._cond:
                self.score = _closed

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(x) for x in items]``, run by the calling thread and any idle worker at once.

        For the independent onnxruntime calls of one big request (called from ``score``, in a
        worker). The caller runs tasks until none is left to start, then waits for those other
        workers took; the first error is raised once every task started has finished.

        Called while a worker scores a batch, no task starts once every request of the batch
        was given up (``JobFuture.give_up``): ``Abandoned`` is raised instead.
        """
        owners: Sequence[_Job] = getattr(self._local, "owners", ())
        if len(items) < 2 or len(self._threads) < 2:
            results = []
            for x in items:
                if owners and _given_up(owners):
                    raise Abandoned
                results.append(fn(x))
            return results
        split = _Split(fn, list(items), [None] * len(items), unfinished=len(items), owners=owners)
        with self._cond:
            self._splits.append(split)
            helpers = min(len(items), len(self._threads)) - 1  # idle workers, to help
            self._cond.notify()  # the first worker, if the caller is a helper
            self._help.notify(helpers)
        while (index := self._claim(split)) is not None:
            self._run_task(split, index)
        split.done.wait()
        if split.error is not None:
            error, split.error = split.error, None
            try:
                raise error
            finally:  # the error's traceback holds this frame: no cycle through its locals
                del error, split
        return split.results

    def _claim(self, split: _Split) -> int | None:
        with self._cond:
            return self._claim_locked(split)

    def _claim_locked(self, split: _Split) -> int | None:
        if split.claimed < len(split.items) and split.owners and _given_up(split.owners):
            # Nothing more starts: the tasks never run count as finished.
            split.error = split.error or Abandoned()
            split.unfinished -= len(split.items) - split.claimed
            split.claimed = len(split.items)
            if split.unfinished == 0:
                split.done.set()
        if split.claimed >= len(split.items):
            if split in self._splits:
                self._splits.remove(split)
            return None
        split.claimed += 1
        return split.claimed - 1

    def _run_task(self, split: _Split, index: int) -> None:
        try:
            split.results[index] = split.fn(split.items[index])
        except BaseException as exc:
            with self._cond:
                if split.error is None:
                    split.error = exc
                # Nothing more starts: the tasks never run count as finished.
                split.unfinished -= len(split.items) - split.claimed
                split.claimed = len(split.items)
        finally:
            with self._cond:
                split.unfinished -= 1
                if split.unfinished == 0:
                    split.done.set()

    def _next(self, index: int) -> list[_Job] | tuple[_Split, int] | None:
        """A batch of requests (empty if every waiting job was cancelled), else a map task to
        help with; None once closed with nothing queued. ``index`` 0 is the first worker."""
        cond = self._cond if index == 0 else self._help
        with self._cond:
            while True:
                if self._jobs and (index == 0 or self._closed or self._helper_may_take()):
                    return self._take_locked(cond)
                if (task := self._claim_any_locked()) is not None:
                    return task
                if self._closed and not self._jobs:
                    return None
                # A helper with requests waiting wakes when the oldest may be taken.
                timeout = None
                if self._jobs:
                    timeout = max(0.0, self._jobs[0].arrived + HELP_AFTER_S - time.monotonic())
                self._waiting += 1
                if index == 0:
                    self._first_waiting = True
                try:
                    cond.wait(timeout)
                finally:
                    self._waiting -= 1
                    if index == 0:
                        self._first_waiting = False

    def _claim_any_locked(self) -> tuple[_Split, int] | None:
        """A task of the oldest split with tasks left; the lock is held. (A method, so that no
        local of ``_next`` keeps an exhausted split, and its batch, while the worker waits.)"""
        while self._splits:
            split = self._splits[0]
            claimed = self._claim_locked(split)  # an exhausted split leaves the deque
            if claimed is not None:
                return split, claimed
        return None

    def _helper_may_take(self) -> bool:
        """A full batch waits, or the oldest request waited HELP_AFTER_S; the lock is held."""
        return (
            self._queued_samples >= self.max_batch_samples
            or time.monotonic() - self._jobs[0].arrived >= HELP_AFTER_S
        )

    def _take_locked(self, cond: threading.Condition) -> list[_Job]:
        """The next batch (empty if every waiting job was cancelled); the lock is held and
        ``cond`` is the calling worker's condition."""
        if self.max_wait > 0:
            deadline = self._jobs[0].arrived + self.max_wait
            while not self._closed and self._queued_samples < self.max_batch_samples:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                cond.wait(remaining)
        batch: list[_Job] = []
        total = 0
        while self._jobs and (not batch or total + self._jobs[0].samples <= self.max_batch_samples):
            job = self._jobs.popleft()
            self._queued_samples -= job.samples
            # A cancelled future (its request timed out) is skipped, never run; a running
            # one can no longer be cancelled, so its result can always be set.
            if not job.future.set_running_or_notify_cancel():
                self.stats.dropped += 1
                continue
            batch.append(job)
            total += job.samples
        return batch

    def _loop(self, index: int) -> None:
        while (work := self._next(index)) is not None:
            if isinstance(work, tuple):
                split, task = work
                self._run_task(split, task)
                with self._cond:
                    self.stats.helped += 1
                split = None  # type: ignore[assignment]
            elif work:
                self._process(work)
            # Let go of the work done before waiting for more: a batch (its signals) or a split
            # (its batch's, through ``owners``) would otherwise stay in memory until then.
            work = None

    def _process(self, batch: list[_Job]) -> None:
        """Score and finish a batch, then wake its requests' event loops (one call per loop)."""
        try:
            self._run_batch(batch)
        finally:
            waiting: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
            for job in batch:
                if job.waiter is not None and job.future.done():
                    waiting.setdefault(job.waiter.get_loop(), []).append(job)
            for loop, jobs in waiting.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                    loop.call_soon_threadsafe(_settle, jobs)

    def _run_batch(self, batch: list[_Job]) -> None:
        signals = [s for job in batch for s in job.signals]
        self._local.owners = batch
        try:
            curves = self.score(signals)
            if len(curves) != len(signals):
                raise RuntimeError(f"model returned {len(curves)} results for {len(signals)} signals")
        except Abandoned:  # every request of the batch was given up: none is retried
            with self._cond:
                self.stats.abandoned += len(batch)
            # A fresh error, without the traceback of the one raised: that one holds the frames
            # of the scoring (the batch's signals, its score curves) and the futures hold it, a
            # cycle only the garbage collector, run seldom here (GC_THRESHOLD), would free.
            for job in batch:
                job.future.set_exception(Abandoned())
            return
        except Exception as exc:
            if len(batch) > 1:  # find the request that fails; the others must not suffer
                for job in batch:
                    self._run_batch([job])
            else:
                batch[0].future.set_exception(exc)
            return
        finally:
            self._local.owners = ()
        with self._cond:
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.signals += len(signals)
        groups: dict[tuple[Any, int], list[tuple[_Job, list[Float32Array]]]] = {}
        start = 0
        for job in batch:
            mine = curves[start : start + len(job.signals)]
            start += len(job.signals)
            f = job.finish
            key = (f.run, id(f.context)) if isinstance(f, Shared) else (None, id(job))
            groups.setdefault(key, []).append((job, mine))
        for members in groups.values():
            self._finish(members)

    def _finish(self, members: list[tuple[_Job, list[Float32Array]]]) -> None:
        """Set each job's future: one shared call for several, else the job's own finish."""
        if len(members) > 1:  # only Shared finishes are grouped
            shares = [cast(Shared, job.finish) for job, _ in members]
            try:
                items = [(s.arg, mine) for s, (_, mine) in zip(shares, members, strict=True)]
                results = shares[0].run(shares[0].context, items)
                if len(results) != len(members):
                    raise RuntimeError(f"finished {len(results)} of {len(members)} requests")
            except Exception:
                for member in members:  # find the request that fails; the others must not suffer
                    self._finish([member])
                return
            for (job, _), result in zip(members, results, strict=True):
                job.future.set_result(result)
            return
        job, mine = members[0]
        try:
            job.future.set_result(job.finish(mine))
        except Exception as exc:
            job.future.set_exception(exc)
