"""The skip condition of the tests that pin threads to CPUs (``app.core.affinity``)."""

from __future__ import annotations

import os

import pytest

from app.core.affinity import PROCESS_CPUS

needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(PROCESS_CPUS) < 2, reason="needs Linux and 2 CPUs"
)
