"""SameCpu: pins the calling thread and worker threads to the caller's CPU, and undoes it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import app.core.affinity as affinity
from app.core.affinity import PROCESS_CPUS, SameCpu
from tests.cpus import needs_two_cpus

pytestmark = needs_two_cpus


class Sleeper:
    """A thread that waits until stopped, and reports its native id."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.stop.wait, daemon=True)
        self.thread.start()
        assert self.thread.native_id is not None
        self.tid: int = self.thread.native_id

    def end(self) -> None:
        self.stop.set()
        self.thread.join()


@pytest.fixture
def worker() -> Iterator[Sleeper]:
    sleeper = Sleeper()
    yield sleeper
    sleeper.end()


def in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a fresh thread, playing the event loop's (so the test's own thread is never
    pinned); its exception is raised here."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append((True, fn()))
        except BaseException as exc:  # handed to the caller
            out.append((False, exc))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def test_pin_puts_the_caller_and_workers_on_the_callers_cpu_and_release_undoes_it(worker: Sleeper) -> None:
    same = SameCpu()
    second = Sleeper()

    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {"ok": same.pin(worker.tid)}
        seen["cpu"] = same.cpu
        seen["caller"] = os.sched_getaffinity(0)
        seen["worker"] = os.sched_getaffinity(worker.tid)
        seen["again"] = same.pin(second.tid)  # still pinned: the second worker joins the same CPU
        seen["second"] = os.sched_getaffinity(second.tid)
        started = Sleeper()  # a thread started while pinned inherits the pin
        seen["started"] = os.sched_getaffinity(started.tid)
        same.release()
        seen["after"] = [os.sched_getaffinity(t) for t in (0, worker.tid, second.tid, started.tid)]
        started.end()
        return seen

    seen = in_thread(scenario)
    second.end()
    assert seen["ok"] and seen["again"] and same.pins == 1
    assert seen["cpu"] in PROCESS_CPUS
    one = {seen["cpu"]}
    assert seen["caller"] == seen["worker"] == seen["second"] == seen["started"] == one
    assert seen["after"] == [set(PROCESS_CPUS)] * 4
    assert same.cpu is None and not same.workers


def test_release_leaves_a_thread_with_its_own_cpus_alone(worker: Sleeper) -> None:
    same = SameCpu()
    other = Sleeper()

    def scenario() -> set[int]:
        assert same.pin(worker.tid)
        assert same.cpu is not None
        mine = set(PROCESS_CPUS) - {same.cpu}  # given by someone else: every CPU but the pinned one
        os.sched_setaffinity(other.tid, mine)
        same.release()
        assert os.sched_getaffinity(worker.tid) == set(PROCESS_CPUS)
        assert os.sched_getaffinity(other.tid) == mine
        return mine

    try:
        in_thread(scenario)
    finally:
        os.sched_setaffinity(other.tid, PROCESS_CPUS)
        other.end()


def test_an_old_pin_is_released_for_the_kernel_to_place_the_threads_again(
    worker: Sleeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    same = SameCpu()

    def scenario() -> list[Any]:
        first = same.pin(worker.tid)
        monkeypatch.setattr(affinity, "REPLACE_AFTER_S", 0.0)
        dropped = same.pin(worker.tid)  # too old: released, this request runs unpinned
        unpinned = (os.sched_getaffinity(0), os.sched_getaffinity(worker.tid))
        again = same.pin(worker.tid)  # the next one pins wherever the thread now runs
        same.release()
        return [first, dropped, unpinned, again]

    first, dropped, unpinned, again = in_thread(scenario)
    assert (first, dropped, again) == (True, False, True)
    assert unpinned == (set(PROCESS_CPUS), set(PROCESS_CPUS))
    assert same.pins == 2


def test_nothing_is_pinned_when_off_or_with_one_cpu(worker: Sleeper) -> None:
    for same in (SameCpu(enabled=False), SameCpu(cpus=frozenset({min(PROCESS_CPUS)}))):
        assert not same.enabled
        assert in_thread(lambda s=same: (s.pin(worker.tid), os.sched_getaffinity(0))) == (
            False,
            set(PROCESS_CPUS),
        )
        assert os.sched_getaffinity(worker.tid) == set(PROCESS_CPUS) and same.pins == 0


def test_a_refusal_turns_pinning_off_with_a_warning_and_undoes_what_was_pinned(
    worker: Sleeper, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    same = SameCpu()
    real = os.sched_setaffinity

    def refuse_for_the_worker(tid: int, cpus: Any) -> None:
        if tid == worker.tid and len(set(cpus)) == 1:
            raise PermissionError(1, "Operation not permitted")
        real(tid, cpus)

    monkeypatch.setattr(os, "sched_setaffinity", refuse_for_the_worker)
    with caplog.at_level(logging.WARNING, logger="app.core.affinity"):
        ok, caller = in_thread(lambda: (same.pin(worker.tid), os.sched_getaffinity(0)))
    assert not ok and not same.enabled
    assert caller == set(PROCESS_CPUS)  # the caller had been pinned: undone
    assert "same-CPU hand-off turned off: sched_setaffinity refused (Operation not permitted)" in caplog.text
    assert not in_thread(lambda: same.pin(worker.tid))  # off for good


def test_a_cpu_outside_the_process_set_turns_pinning_off(
    worker: Sleeper, caplog: pytest.LogCaptureFixture
) -> None:
    outside = max(PROCESS_CPUS) + 1
    same = SameCpu(getcpu=lambda: outside)
    with caplog.at_level(logging.WARNING, logger="app.core.affinity"):
        assert not in_thread(lambda: same.pin(worker.tid))
    assert not same.enabled and f"runs on CPU {outside}, outside the process's CPUs" in caplog.text


def test_a_worker_that_has_ended_is_not_pinned_and_pinning_stays_on() -> None:
    # An ended thread's id may be reused by the time it is pinned (it was, in a full run); no
    # thread ever has an id above pid_max, so the kernel answers this one as for an ended thread.
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    same = SameCpu()

    def scenario() -> bool:
        ok = same.pin(gone)
        same.release()
        return ok

    assert not in_thread(scenario)
    assert same.enabled
