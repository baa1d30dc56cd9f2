"""How long this machine takes to wake a blocked thread: part of every request's latency.

    python -m benchmarks.wakeup

A request at concurrency 1 wakes a blocked thread four times: the server's event loop (the
request arrives), the model's inference thread (the request is queued), the event loop again
(the answer is ready) and the client (the response arrives). The first and last are in any
server; the middle two are the price of keeping onnxruntime off the event loop.

Two threads of this process pass one byte back and forth through pipes (blocking reads and
writes; the interpreter lock is released while a thread blocks), pinned to one CPU, then to
two different CPUs. On a virtual machine a wake-up on another CPU (an inter-processor
interrupt) can cost tens of microseconds where one on the same CPU costs one or two. Reports
medians; never fails on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from typing import Any


def round_trip_us(cpus: tuple[int, int], trips: int) -> float:
    """Median microseconds for one byte to go from a thread on ``cpus[0]`` to one on ``cpus[1]``
    and back."""
    to_r, to_w = os.pipe()
    back_r, back_w = os.pipe()

    def echo() -> None:
        os.sched_setaffinity(0, {cpus[1]})  # 0: the calling thread
        for _ in range(trips):
            os.read(to_r, 1)
            os.write(back_w, b"x")

    mine = os.sched_getaffinity(0)
    thread = threading.Thread(target=echo, name="wakeup-echo", daemon=True)
    times = []
    try:
        os.sched_setaffinity(0, {cpus[0]})
        thread.start()
        for _ in range(trips):
            t0 = time.perf_counter()
            os.write(to_w, b"x")
            os.read(back_r, 1)
            times.append(time.perf_counter() - t0)
        thread.join()
    finally:
        os.sched_setaffinity(0, mine)
        for fd in (to_r, to_w, back_r, back_w):
            os.close(fd)
    return statistics.median(times[len(times) // 10 :]) * 1e6  # the first tenth warms up


def measure(trips: int = 5000) -> dict[str, Any]:
    """Round trips between two threads on one CPU and on two (None with one usable CPU)."""
    usable = sorted(os.sched_getaffinity(0))
    same = round_trip_us((usable[0], usable[0]), trips)
    other = round_trip_us((usable[0], usable[1]), trips) if len(usable) > 1 else None
    return {
        "trips": trips,
        "same_cpu_round_trip_us": same,
        "two_cpus_round_trip_us": other,
        # A round trip is two wake-ups.
        "two_cpus_wakeup_us": None if other is None else other / 2,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trips", type=int, default=5000)
    a = p.parse_args()
    print(json.dumps(measure(a.trips), indent=2))


if __name__ == "__main__":
    main()
