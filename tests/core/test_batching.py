"""Dynamic batching: same results as one by one, a bounded queue, errors kept to their request."""

import asyncio
import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import app.core.batching as batching
from app.core.batching import Batcher, Shared
from app.core.errors import Overloaded
from app.core.model import InferenceOptions, OnnxModel
from app.core.windows import score_pieces


@pytest.mark.parametrize("workers", [1, 3])
def test_concurrent_requests_equal_one_by_one(tiny_model_dir: Path, workers: int) -> None:
    model = OnnxModel(tiny_model_dir, InferenceOptions(window=1024, max_batch_samples=20_000))
    batcher = Batcher(model.scores, max_batch_samples=20_000, max_queue=100, max_wait=0.005, workers=workers)
    rng = np.random.default_rng(0)
    requests = [
        [rng.standard_normal(int(n)) for n in rng.integers(64, 3000, size=k)]
        for k in rng.integers(1, 4, size=40)
    ]
    expected = [[model.scores([s])[0] for s in req] for req in requests]
    with ThreadPoolExecutor(16) as pool:
        futures = list(pool.map(lambda req: batcher.submit(req, lambda curves: curves), requests))
        results = [f.result(timeout=60) for f in futures]
    batcher.close()
    for got, want in zip(results, expected, strict=True):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)
    assert batcher.stats.requests == 40 and batcher.stats.batches < 40  # some shared a run


def blocked_batcher(max_queue: int) -> tuple[Batcher, threading.Event, threading.Event]:
    started, release = threading.Event(), threading.Event()

    def score(signals):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(10)
        return [np.zeros(len(s), dtype=np.float32) for s in signals]

    return Batcher(score, max_batch_samples=1000, max_queue=max_queue), started, release


def test_full_queue_refuses_instead_of_growing() -> None:
    batcher, started, release = blocked_batcher(max_queue=3)
    first = batcher.submit([np.zeros(10)], len)
    assert started.wait(5)  # the first request is running, the queue is empty
    queued = [batcher.submit([np.zeros(10)], len) for _ in range(3)]
    with pytest.raises(Overloaded, match="the limit is 3"):
        batcher.submit([np.zeros(10)], len)
    assert batcher.queued == 3
    release.set()
    assert first.result(5) == 1 and [f.result(5) for f in queued] == [1, 1, 1]
    batcher.submit([np.zeros(10)], len).result(5)  # room again
    batcher.close()


def test_requests_let_in_hold_their_place_of_the_queue_while_their_bodies_are_read() -> None:
    """A request let in before its body is read (``admit``) counts against ``max_queue`` until
    it is queued or fails: the bodies read at once are bounded by the queue, not by the
    connections."""
    batcher, started, release = blocked_batcher(max_queue=3)
    running = batcher.submit([np.zeros(10)], len)
    assert started.wait(5)  # running: no place of the queue
    reading = [batcher.admit() for _ in range(2)]
    queued = batcher.submit([np.zeros(10)], len)
    with pytest.raises(Overloaded, match="3 requests are waiting for this model \\(the limit is 3\\)"):
        batcher.admit()  # two bodies read, one request queued: full
    with pytest.raises(Overloaded):
        batcher.submit([np.zeros(10)], len)
    reading[0].release()  # queued next: its place is the request's now
    reading[0].release()  # once only
    late = batcher.submit([np.zeros(10)], len)
    with reading[1]:  # fails while its body is read: the place is given back on the way out
        pass
    with batcher.admit():  # room again
        pass
    release.set()
    assert [f.result(5) for f in (running, queued, late)] == [1, 1, 1]
    batcher.close()


def test_a_failing_request_does_not_fail_its_batch() -> None:
    def score(signals):  # type: ignore[no-untyped-def]
        if any(s[0] == 666 for s in signals):
            raise ValueError("bad signal")
        return [np.asarray(s, dtype=np.float32) for s in signals]

    gate = threading.Event()
    batcher = Batcher(lambda s: (gate.wait(5), score(s))[1], max_batch_samples=1000, max_queue=10)
    good1 = batcher.submit([np.ones(5)], lambda c: float(c[0].sum()))
    bad = batcher.submit([np.full(5, 666.0)], lambda c: 0.0)
    good2 = batcher.submit([np.ones(3), np.ones(2)], lambda c: [float(x.sum()) for x in c])
    gate.set()
    assert good1.result(5) == 5.0
    with pytest.raises(ValueError, match="bad signal"):
        bad.result(5)
    assert good2.result(5) == [3.0, 2.0]
    batcher.close()


def gated_batcher() -> tuple[Batcher, threading.Event]:
    """A batcher running a first request until ``gate`` is set: what is submitted meanwhile
    shares the next batch."""
    started, gate = threading.Event(), threading.Event()

    def score(signals):  # type: ignore[no-untyped-def]
        started.set()
        gate.wait(5)
        return [np.asarray(s, dtype=np.float32) for s in signals]

    batcher = Batcher(score, max_batch_samples=1000, max_queue=10)
    assert batcher.submit([np.zeros(1)], len) and started.wait(5)
    return batcher, gate


def test_shared_finishes_run_once_per_batch_and_context() -> None:
    calls: list[tuple[str, list[float]]] = []

    def totals(context, items):  # type: ignore[no-untyped-def]
        calls.append((context, [arg for arg, _ in items]))
        return [(context, arg, [float(c.sum()) for c in curves]) for arg, curves in items]

    batcher, gate = gated_batcher()
    a = batcher.submit([np.ones(2)], Shared(totals, "card-a", 1))
    plain = batcher.submit([np.ones(7)], lambda c: float(c[0].sum()))
    b = batcher.submit([np.ones(3), np.ones(4)], Shared(totals, "card-a", 2))
    other = batcher.submit([np.ones(5)], Shared(totals, "card-b", 3))
    gate.set()
    assert a.result(5) == ("card-a", 1, [2.0])
    assert b.result(5) == ("card-a", 2, [3.0, 4.0])
    assert other.result(5) == ("card-b", 3, [5.0])
    assert plain.result(5) == 7.0
    batcher.close()
    assert batcher.stats.batches == 2  # the first request, then the four others together
    assert sorted(calls) == [("card-a", [1, 2]), ("card-b", [3])]


def test_a_failing_shared_finish_fails_only_its_request() -> None:
    def answers(context, items):  # type: ignore[no-untyped-def]
        if any(arg == "bad" for arg, _ in items):
            raise ValueError("bad request")
        return [arg for arg, _ in items]

    batcher, gate = gated_batcher()
    futures = [batcher.submit([np.ones(2)], Shared(answers, None, arg)) for arg in ("x", "bad", "y")]
    short = batcher.submit([np.ones(2)], Shared(lambda _, items: [], "other", "z"))
    gate.set()
    assert futures[0].result(5) == "x" and futures[2].result(5) == "y"
    with pytest.raises(ValueError, match="bad request"):
        futures[1].result(5)
    with pytest.raises(IndexError):  # one request alone: the shared call's error is its own
        short.result(5)
    batcher.close()


def test_result_count_is_checked() -> None:
    batcher = Batcher(lambda s: [np.zeros(1, dtype=np.float32)], max_batch_samples=100, max_queue=10)
    with pytest.raises(RuntimeError, match="1 results for 2 signals"):
        batcher.submit([np.zeros(3), np.zeros(3)], len).result(5)
    batcher.close()


def test_close_finishes_the_queue_then_refuses() -> None:
    batcher, _started, release = blocked_batcher(max_queue=10)
    futures = [batcher.submit([np.zeros(4)], len) for _ in range(5)]
    release.set()
    batcher.close()
    assert [f.result(1) for f in futures] == [1] * 5
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.submit([np.zeros(4)], len)


def test_batch_sample_limit_splits_runs() -> None:
    sizes: list[int] = []

    def score(signals):  # type: ignore[no-untyped-def]
        sizes.append(sum(len(s) for s in signals))
        return [np.zeros(len(s), dtype=np.float32) for s in signals]

    gate = threading.Event()
    batcher = Batcher(lambda s: (gate.wait(5), score(s))[1], max_batch_samples=100, max_queue=50)
    futures = [batcher.submit([np.zeros(30)], len) for _ in range(10)]
    gate.set()
    for f in futures:
        f.result(5)
    batcher.close()
    assert sum(sizes) == 300 and max(sizes) <= 100


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        Batcher(lambda s: [], max_batch_samples=10, max_queue=0)


def test_map_runs_on_idle_workers_and_keeps_order() -> None:
    batcher = Batcher(lambda s: [], max_batch_samples=10, max_queue=10, workers=3)
    together = threading.Barrier(2, timeout=30)  # broken unless two threads run tasks at once
    threads: set[str] = set()

    def task(x: int) -> int:
        threads.add(threading.current_thread().name)
        if x < 2:
            together.wait()
        return x * x

    assert batcher.map(task, list(range(20))) == [x * x for x in range(20)]
    assert len(threads) >= 2 and batcher.stats.helped >= 1
    assert batcher.map(task, [5]) == [25] and batcher.map(task, []) == []
    batcher.close()


def test_map_raises_the_first_error_after_every_started_task() -> None:
    batcher = Batcher(lambda s: [], max_batch_samples=10, max_queue=10, workers=2)
    finished: list[int] = []

    def task(x: int) -> int:
        if x == 3:
            raise ValueError("task 3 failed")
        finished.append(x)
        return x

    with pytest.raises(ValueError, match="task 3 failed"):
        batcher.map(task, list(range(10)))
    assert 3 not in finished and len(set(finished)) == len(finished)
    assert batcher.map(task, [1, 2]) == [1, 2]  # still serving
    batcher.close()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_long_signals_spread_over_workers_equal_one_by_one(tiny_model_dir: Path, workers: int) -> None:
    """The registry's scoring: a long signal's window batches run on several workers at once."""
    model = OnnxModel(tiny_model_dir, InferenceOptions(window=512, max_batch_samples=1024))
    together = threading.Barrier(min(workers, 2), timeout=30)  # the first two calls meet

    calls = iter(range(10**6))  # next() is atomic: each call gets its own number

    def run(batch: np.ndarray) -> np.ndarray:
        if next(calls) < 2:
            together.wait()
        return model.run(batch)

    def score(signals):  # type: ignore[no-untyped-def]
        arrays = [np.asarray(s) for s in signals]
        return score_pieces(arrays, model.plan, run, 1024, map_batches=batcher.map)

    batcher = Batcher(score, max_batch_samples=1024, max_queue=10, workers=workers)
    rng = np.random.default_rng(3)
    signals = [rng.standard_normal(n) for n in (9000, 700, 3000)]
    got = batcher.submit(signals, lambda curves: curves).result(timeout=60)
    batcher.close()
    for g, s in zip(got, signals, strict=True):
        np.testing.assert_allclose(g, model.scores([s])[0], atol=1e-5, rtol=0)
    assert (batcher.stats.helped >= 1) == (workers > 1)


def wait_idle(batcher: Batcher) -> None:
    for _ in range(1000):  # the workers reach their wait soon after start or after a batch
        if batcher.idle:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the batcher's workers never became idle")


def test_run_now_only_when_every_worker_is_idle(tiny_model_dir: Path) -> None:
    model = OnnxModel(tiny_model_dir, InferenceOptions(window=512, max_batch_samples=2048))
    batcher = Batcher(model.scores, max_batch_samples=2048, max_queue=10, workers=2)
    x = [np.random.default_rng(4).standard_normal(700)]
    queued = batcher.submit(x, lambda curves: curves).result(10)
    wait_idle(batcher)
    done, now = batcher.run_now(x, lambda curves: curves)
    assert done and batcher.stats.now == 1
    np.testing.assert_array_equal(now[0], queued[0])  # the same scoring as a batch of one
    batcher.close()
    assert batcher.run_now(x, len) == (False, None)  # closed: submit refuses it with the reason

    busy, started, release = blocked_batcher(max_queue=10)
    first = busy.submit([np.zeros(10)], len)
    assert started.wait(5)  # its only worker is busy
    assert busy.run_now([np.zeros(10)], len) == (False, None)
    release.set()
    assert first.result(5) == 1
    wait_idle(busy)
    assert busy.run_now([np.zeros(10)], len) == (True, 1)
    busy.close()


def test_run_now_raises_the_scoring_error() -> None:
    def score(signals):  # type: ignore[no-untyped-def]
        raise ValueError("bad signal")

    batcher = Batcher(score, max_batch_samples=100, max_queue=10)
    wait_idle(batcher)
    with pytest.raises(ValueError, match="bad signal"):
        batcher.run_now([np.zeros(3)], len)
    batcher.close()


def test_small_requests_one_at_a_time_stay_on_the_first_worker() -> None:
    """An idle first worker takes every request: helpers do not split small work."""
    ran: list[str] = []

    def score(signals):  # type: ignore[no-untyped-def]
        ran.append(threading.current_thread().name)
        return [np.zeros(len(s), dtype=np.float32) for s in signals]

    batcher = Batcher(score, max_batch_samples=1000, max_queue=10, workers=3, name="m")
    # Every worker runs one of a long signal's calls first (the caller and three workers meet):
    # running a map task must not change a worker's role.
    together = threading.Barrier(4, timeout=30)

    def task(x: int) -> int:
        if x < 4:
            together.wait()
        return x

    wait_idle(batcher)
    assert batcher.map(task, list(range(30))) == list(range(30))
    for _ in range(20):
        wait_idle(batcher)
        assert batcher.submit([np.zeros(10)], len).result(5) == 1
    batcher.close()
    assert set(ran) == {"batcher-m-0"}


@pytest.mark.parametrize("samples", [10, 1000])  # the oldest waits too long / a full batch waits
def test_a_helper_takes_what_the_busy_first_worker_cannot(samples: int) -> None:
    release = threading.Event()
    first_started = threading.Event()

    def score(signals):  # type: ignore[no-untyped-def]
        if threading.current_thread().name.endswith("-0"):
            first_started.set()
            release.wait(10)  # the first worker stays busy until the end of the test
        return [np.zeros(len(s), dtype=np.float32) for s in signals]

    batcher = Batcher(score, max_batch_samples=1000, max_queue=10, workers=2, name="m")
    wait_idle(batcher)  # the first worker waits, so it takes the first request
    first = batcher.submit([np.zeros(10)], len)
    assert first_started.wait(5)
    second = batcher.submit([np.zeros(samples)], len)
    assert second.result(5) == 1 and not first.done()  # a helper ran it
    release.set()
    assert first.result(5) == 1
    batcher.close()


def test_waiters_of_a_batch_are_settled_by_one_call_into_their_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request's event-loop future gets its own outcome (results and errors), and the
    requests of one batch wake their loop once, not once each."""

    settle_calls: list[int] = []
    settle = batching._settle

    def counting(jobs):  # type: ignore[no-untyped-def]
        settle_calls.append(len(jobs))
        settle(jobs)

    monkeypatch.setattr(batching, "_settle", counting)
    gate = threading.Event()

    def score(signals):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return [np.asarray(s, dtype=np.float32) for s in signals]

    def finish(curves):  # type: ignore[no-untyped-def]
        if curves[0][0] == 666:
            raise ValueError("bad request")
        return float(curves[0].sum())

    batcher = Batcher(score, max_batch_samples=1000, max_queue=10)

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        blocker = loop.create_future()
        batcher.submit([np.ones(2)], finish, blocker)  # runs alone, held by the gate
        while batcher.queued:
            await asyncio.sleep(0.001)
        waiters = [loop.create_future() for _ in range(4)]
        for value, waiter in zip((1.0, 2.0, 666.0, 3.0), waiters, strict=True):
            batcher.submit([np.full(3, value)], finish, waiter)
        gate.set()  # the four queued requests now run as one batch
        outcomes = await asyncio.gather(blocker, *waiters, return_exceptions=True)
        return list(outcomes)

    outcomes = asyncio.run(main())
    batcher.close()
    assert outcomes[:3] == [2.0, 3.0, 6.0] and outcomes[4] == 9.0
    assert isinstance(outcomes[3], ValueError) and "bad request" in str(outcomes[3])
    assert settle_calls == [1, 4]


def test_a_cancelled_request_is_dropped_and_a_closed_loop_is_no_error() -> None:
    batcher, started, release = blocked_batcher(max_queue=5)
    first = batcher.submit([np.zeros(10)], len)
    assert started.wait(5)
    loop = asyncio.new_event_loop()
    waiter = loop.create_future()
    queued = batcher.submit([np.zeros(10)], len, waiter)
    gone = loop.create_future()
    batcher.submit([np.zeros(10)], len, gone)
    assert queued.cancel()  # what the deadline does to a request still queued
    loop.close()  # the other request's loop is gone before its result
    release.set()
    assert first.result(5) == 1
    batcher.close()
    assert batcher.stats.dropped == 1 and batcher.stats.requests == 2
    assert not waiter.done() and not gone.done()  # nobody settled them: their loop was closed


class LongScoring:
    """A scoring function whose every request is ``calls`` map tasks; each task records its
    index and waits for ``go_on``, so every worker holds at most one task while the test acts."""

    def __init__(self, calls: int, running: int = 1) -> None:
        self.calls, self.running_at = calls, running
        self.ran: list[int] = []
        self.running, self.go_on = threading.Event(), threading.Event()
        self.batcher: Batcher | None = None

    def task(self, i: int) -> int:
        self.ran.append(i)
        if len(self.ran) >= self.running_at:
            self.running.set()  # that many calls have started
        assert self.go_on.wait(10)
        return i

    def __call__(self, signals):  # type: ignore[no-untyped-def]
        assert self.batcher is not None
        self.batcher.map(self.task, list(range(self.calls)))
        return [np.zeros(len(s), dtype=np.float32) for s in signals]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_request_given_up_while_it_runs_skips_its_calls_not_yet_started(workers: int) -> None:
    scoring = LongScoring(calls=50)
    batcher = scoring.batcher = Batcher(scoring, max_batch_samples=1000, max_queue=4, workers=workers)
    future = batcher.submit([np.zeros(10)], len)
    assert scoring.running.wait(10)
    future.give_up()  # what the deadline, or a client gone, does to a running request
    assert not future.cancelled() and future.abandoned
    scoring.go_on.set()
    with pytest.raises(batching.Abandoned):
        future.result(10)
    # Each worker had started at most one call when it was given up; none started after.
    assert 1 <= len(scoring.ran) <= workers, scoring.ran
    assert batcher.stats.abandoned == 1 and batcher.stats.batches == 0
    scoring.ran.clear()
    assert batcher.submit([np.zeros(10)], len).result(10) == 1  # still serving: every call runs
    assert sorted(scoring.ran) == list(range(50))
    batcher.close()


def test_a_batch_still_wanted_by_one_request_runs_to_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "HELP_AFTER_S", 600.0)  # only the first worker takes requests
    scoring = LongScoring(calls=20, running=2)  # the first worker's call and a helper's
    blocker_started, release = threading.Event(), threading.Event()

    def score(signals):  # type: ignore[no-untyped-def]
        if len(signals) == 1 and signals[0].size == 7:  # the blocker: holds the worker
            blocker_started.set()
            assert release.wait(10)
            return [np.zeros(7, dtype=np.float32)]
        return scoring(signals)

    batcher = scoring.batcher = Batcher(score, max_batch_samples=1000, max_queue=4, workers=2)

    def size(curves: list[np.ndarray]) -> int:
        return curves[0].size

    blocker = batcher.submit([np.zeros(7)], size)
    assert blocker_started.wait(10)
    wanted = batcher.submit([np.zeros(10)], size)
    given_up = batcher.submit([np.zeros(11)], size)
    release.set()  # the two queued requests are now taken as one batch
    assert scoring.running.wait(10)
    given_up.give_up()
    scoring.go_on.set()
    assert blocker.result(10) == 7 and wanted.result(10) == 10 and given_up.result(10) == 11
    assert sorted(scoring.ran) == list(range(20))
    assert batcher.stats.abandoned == 0 and batcher.stats.requests == 3 and batcher.stats.batches == 2
    assert batcher.stats.helped >= 1  # the second worker helped with the batch's calls
    batcher.close()


def test_give_up_drops_a_queued_request_unrun() -> None:
    batcher, started, release = blocked_batcher(max_queue=5)
    first = batcher.submit([np.zeros(10)], len)
    assert started.wait(5)
    queued = batcher.submit([np.zeros(10)], len)
    queued.give_up()
    assert queued.cancelled() and not queued.abandoned
    release.set()
    assert first.result(5) == 1
    batcher.close()
    assert batcher.stats.dropped == 1 and batcher.stats.abandoned == 0 and batcher.stats.requests == 1


def test_a_queued_request_given_up_leaves_the_queue_at_once() -> None:
    """Its place under max_queue is free for the next request while the workers are still busy,
    and its signals are no longer held."""
    batcher, started, release = blocked_batcher(max_queue=2)
    first = batcher.submit([np.zeros(10)], len)
    assert started.wait(5)  # the worker is busy: the queue is not being taken
    queued = [batcher.submit([np.zeros(10)], len) for _ in range(2)]
    with pytest.raises(Overloaded):
        batcher.submit([np.zeros(10)], len)
    queued[0].give_up()
    assert batcher.queued == 1 and batcher.stats.dropped == 1
    later = batcher.submit([np.zeros(10)], len)  # room again, the worker still busy
    release.set()
    assert first.result(5) == 1 and queued[1].result(5) == 1 and later.result(5) == 1
    batcher.close()
    assert queued[0].cancelled() and batcher.stats.dropped == 1 and batcher.stats.requests == 3


def test_a_request_given_up_while_it_runs_is_freed_without_the_garbage_collector() -> None:
    """Its signals (and its batch's scores) go as soon as nobody refers to the request: no
    reference cycle through the error that ended it waits for the cyclic collector, which the
    service runs seldom (GC_THRESHOLD). With large signals such cycles took RSS to 1 GiB."""
    scoring = LongScoring(calls=10)
    batcher = scoring.batcher = Batcher(scoring, max_batch_samples=1000, max_queue=4, workers=2)
    signal = np.zeros(10)
    freed = weakref.ref(signal)
    gc.disable()
    try:
        future = batcher.submit([signal], len)
        del signal
        assert scoring.running.wait(10)
        future.give_up()
        scoring.go_on.set()
        with pytest.raises(batching.Abandoned):
            future.result(10)
        assert batcher.submit([np.zeros(10)], len).result(10) == 1  # the worker is past it
        for _ in range(10_000):  # until every worker waits for work again (done with its last)
            if batcher.idle:
                break
            time.sleep(0.001)
        del future
        assert freed() is None, "a reference to the request's signals is left"
    finally:
        gc.enable()
        batcher.close()
