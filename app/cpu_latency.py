"""Opt-in: a Linux CPU latency QoS request, held while the service runs.

Between two requests at low load the CPUs go idle, and an idle CPU takes time to wake: the
network wakes the event loop, the event loop wakes an inference thread, which wakes the event
loop again with the answer. On the 2-core VM of the benchmarks each such wake costs about
30 µs, and code runs slower on a CPU just woken: at concurrency 1 a 1×1024 request took 0.15–0.22
ms less with a request of 0 µs held, side by side (see benchmarks/README.md).

Linux lets a process bound that cost for as long as it holds ``/dev/cpu_dma_latency`` open
with a 32-bit latency in microseconds written to it (the kernel's "CPU latency QoS"): no CPU
then enters an idle state that takes longer to leave; 0 keeps idle CPUs polling, never halted.
The request covers the whole machine (the kernel keeps the lowest of all the requests) and
ends when the file is closed, here when the service stops or dies, so nothing stays behind.
It is what tuned's ``latency-performance`` profile does for a whole host. The price: idle
CPUs stay awake, so they draw more power, and on a VM the host sees busy vCPUs.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from types import TracebackType

DEVICE = Path("/dev/cpu_dma_latency")
SETTING = "SHAPE_DETECTOR_CPU_LATENCY_US"


class CpuLatencyError(RuntimeError):
    """The request could not be made; the message says why and what to do."""


def current_limit(device: Path | None = None) -> int:
    """The machine's CPU latency limit now, µs: the lowest request held by any process."""
    fd = os.open(DEVICE if device is None else device, os.O_RDONLY)
    try:
        (value,) = struct.unpack("=i", os.read(fd, 4))
    finally:
        os.close(fd)
    return int(value)


class CpuLatencyRequest:
    """Holds a CPU latency request of ``microseconds`` between ``open`` and ``close`` (or as a
    context manager)."""

    def __init__(self, microseconds: int, device: Path | None = None) -> None:
        if microseconds < 0:
            raise ValueError(f"a CPU latency must be >= 0 µs, got {microseconds}")
        self.microseconds = microseconds
        self.device = DEVICE if device is None else device
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open_device(self) -> int:
        try:
            return os.open(self.device, os.O_WRONLY)
        except OSError as exc:
            raise CpuLatencyError(
                f"{SETTING}={self.microseconds}: cannot open {self.device} ({exc.strerror}). The "
                "request needs Linux and write access to that device: run as root on the host, or "
                "in a container given the device (docker run --device /dev/cpu_dma_latency) as "
                f"root; or unset {SETTING}"
            ) from None

    def check(self) -> None:
        """Raises ``CpuLatencyError`` unless the device opens for writing; holds nothing (the
        kernel's request, made at the open, has no latency until one is written, and ends at
        the close). For the settings: a refusal stops the start before anything else runs."""
        os.close(self._open_device())

    def open(self) -> None:
        if self._fd is not None:
            return
        fd = self._open_device()
        try:
            os.write(fd, struct.pack("=i", self.microseconds))
        except OSError as exc:
            os.close(fd)
            raise CpuLatencyError(
                f"{SETTING}={self.microseconds}: {self.device} refused the request ({exc.strerror})"
            ) from None
        self._fd = fd

    def close(self) -> None:
        """Ends the request (the kernel drops it when its file is closed)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> CpuLatencyRequest:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
