"""The thread wake-up measurement: well-formed, and it leaves the caller's CPUs as they were."""

from __future__ import annotations

import math
import os

import pytest

from benchmarks import wakeup


def test_round_trips_are_measured_and_affinity_restored() -> None:
    before = os.sched_getaffinity(0)
    result = wakeup.measure(trips=200)
    assert os.sched_getaffinity(0) == before
    assert result["trips"] == 200
    assert math.isfinite(result["same_cpu_round_trip_us"]) and result["same_cpu_round_trip_us"] > 0
    if len(before) > 1:
        assert result["two_cpus_round_trip_us"] > 0
        assert result["two_cpus_wakeup_us"] == pytest.approx(result["two_cpus_round_trip_us"] / 2)
    else:
        assert result["two_cpus_round_trip_us"] is None


def test_one_usable_cpu_measures_the_same_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    before = os.sched_getaffinity(0)
    only = min(before)
    real = os.sched_getaffinity
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {only} if pid == 0 else real(pid))
    try:
        result = wakeup.measure(trips=50)
    finally:  # measure restores the CPUs it was told this thread had: {only}; later tests need all
        os.sched_setaffinity(0, before)
    assert result["two_cpus_round_trip_us"] is None and result["two_cpus_wakeup_us"] is None
    assert result["same_cpu_round_trip_us"] > 0
