"""Give the heap's free memory back to the operating system (glibc's ``malloc_trim``).

Each hot reload creates an onnxruntime session and warms it up (the largest batch), then frees
the old version's. glibc keeps what is freed in its arenas, in holes among what is still in
use: with the shipped models, reloaded in turn, the process grew from 199 MiB to 270–310 MiB
over 200 reloads with every old version freed at once, and stayed at 200–217 MiB with a trim
after each (``app.core.reload``). ``malloc_trim(0)`` returns the free pages of every arena. It
exists in glibc only: elsewhere (musl, macOS, Windows) ``trim`` does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
from collections.abc import Callable

log = logging.getLogger("shape_detector.models")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None).malloc_trim  # the process's C library (musl has no such call)
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def trim() -> bool:
    """Return the heap's free pages to the operating system; False where there is no way to.

    Blocking (a few ms for a large heap; ctypes releases the interpreter lock meanwhile): call
    it off the event loop."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True
