"""Checks shared by the training package's command lines (``training.train``, ``training.report``)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_problem(flag: str, threads: int, zero: str) -> str | None:
    """Why ``threads`` is no number of threads to run on, or None. Each thread of a pool is
    started at once: 100 000 asked for are as many threads, enough to leave the machine unable
    to start a process; more than the CPUs only make the threads wait for each other."""
    cpus = usable_cpus()
    if not 0 <= threads <= cpus:
        return (
            f"{flag} {threads}: give a number of threads from 0 ({zero}) to {cpus}, "
            "the CPUs this process may use"
        )
    return None
