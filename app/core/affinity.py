"""At low load, the event loop and the inference threads on one CPU.

The event loop hands each request to its model's inference thread and the inference thread
hands the answer back. At low load the other CPU is idle, so Linux wakes the inference thread
there, and wakes the event loop on the idle CPU again for the answer: two wakes across CPUs
per request. On the 2-core VM of the benchmarks each costs the waker and the woken about
30 µs, and onnxruntime runs slower on a CPU just woken. Pinned to the event loop's CPU, each
hand-off is a switch between two threads of one CPU: a 1×1024 round trip in process took
0.27 ms against 0.34–0.43 ms. Nothing blocks the event loop: inference still runs in its own
thread and releases the interpreter lock, and the kernel shares the CPU if the loop has work.

``SameCpu.pin`` is called for each lone request (nothing else in flight) and ``release`` as
soon as a request is not lone: under load nothing is pinned and the kernel spreads the
threads as usual. The pin lasts while requests stay lone rather than being undone after each
one: unpinned between requests, the event loop moved to the client's CPU at most requests
(2019 moves in 3000 at concurrency 1) and the inference thread followed it, which cost more
than it saved. A pin is dropped after ``REPLACE_AFTER_S`` so that the kernel can place the
event loop again (another process may have come to share its CPU); the next lone request
pins it wherever it then runs.

A thread started while the event loop is pinned inherits its single CPU (Linux copies the
creator's mask), so ``release`` gives every thread of the process still pinned to that CPU the
process's CPU set again.

Opt-in (``SHAPE_DETECTOR_SAME_CPU_MAX_SAMPLES``): a pinned thread cannot leave its CPU when
something else takes it, and over HTTP with the access log on the gain was near the noise
(see benchmarks/README.md). Linux only (``sched_setaffinity`` and glibc's
``sched_getcpu``); elsewhere, with one CPU, or after any refusal (a seccomp profile, a CPU set
changed under the process), pinning is off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TASKS = "/proc/self/task"
REPLACE_AFTER_S = 1.0  # a pin this old is dropped at the next request, for the kernel to re-place
# The CPUs this process may use, read at import, before anything is pinned.
PROCESS_CPUS = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


def _sched_getcpu() -> Callable[[], int] | None:
    """glibc's ``sched_getcpu`` (a vDSO call, ~0.1 µs), or None where it is missing."""
    try:
        fn = ctypes.CDLL(None).sched_getcpu
    except (AttributeError, OSError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = []
    return fn


class SameCpu:
    """Pins the calling thread (the event loop's) and worker threads to the calling thread's
    CPU until ``release``. Call both from the event loop's thread."""

    def __init__(
        self,
        enabled: bool = True,
        getcpu: Callable[[], int] | None = None,
        cpus: frozenset[int] = PROCESS_CPUS,
    ) -> None:
        can = hasattr(os, "sched_setaffinity")
        self.cpus = cpus  # what ``release`` gives back
        self._getcpu = getcpu if getcpu is not None or not enabled else _sched_getcpu()
        self.enabled = enabled and can and len(self.cpus) > 1 and self._getcpu is not None
        self.cpu: int | None = None  # the CPU pinned to, while pinned
        self.workers: set[int] = set()  # the worker threads pinned with this thread
        self.pins = 0  # times this thread was pinned
        self._since = 0.0

    def pin(self, worker: int) -> bool:
        """Pin this thread, if it is not, and ``worker`` (a native thread id) to this thread's
        CPU; True if both now run there. A pin older than REPLACE_AFTER_S is released instead."""
        if not self.enabled or self._getcpu is None:
            return False
        if self.cpu is not None and time.monotonic() - self._since >= REPLACE_AFTER_S:
            self.release()
            return False
        try:
            if self.cpu is None:
                cpu = self._getcpu()
                if cpu not in self.cpus:
                    self._off(f"this thread runs on CPU {cpu}, outside the process's CPUs")
                    return False
                os.sched_setaffinity(0, (cpu,))
                self.cpu, self._since = cpu, time.monotonic()
                self.pins += 1
            if worker not in self.workers:
                os.sched_setaffinity(worker, (self.cpu,))
                self.workers.add(worker)
        except ProcessLookupError:  # the worker has ended (its model was swapped)
            return False
        except OSError as exc:
            self._off(f"sched_setaffinity refused ({exc.strerror})")
            self.release()
            return False
        return True

    def release(self) -> None:
        """If anything is pinned: every thread of the process pinned to that one CPU (threads
        started meanwhile included) gets the process's CPU set back; a thread with any other
        set of CPUs keeps it."""
        if self.cpu is None:
            return
        pinned = {self.cpu}
        try:
            tasks = [int(task) for task in os.listdir(TASKS)]
        except OSError:
            tasks = [0, *self.workers]  # 0: this thread
        self.cpu = None
        self.workers.clear()
        for task in tasks:
            try:
                if os.sched_getaffinity(task) == pinned:
                    os.sched_setaffinity(task, self.cpus)
            except ProcessLookupError:  # the thread has ended
                pass
            except OSError as exc:
                self._off(f"restoring thread {task}'s CPUs failed ({exc.strerror})")

    def _off(self, why: str) -> None:
        if self.enabled:
            log.warning("same-CPU hand-off turned off: %s", why)
        self.enabled = False
