"""Raw onnxruntime on the shipped model, in this process: the service's session, no HTTP.

The session is the service's own (``OnnxModel``: same session options); the timed work is
``session.run`` only. Each case runs with one caller, and with one caller per usable CPU
sharing the session (how the service's inference workers call it, each call on its own
core): the better of the two is the limit a server on this machine can reach. The
1-million-sample case runs exactly the windows and batches the service's windowing produces
(``WindowPlan.split`` with the service's window length, batched up to its max batch samples),
so "raw" there is the service's inference work without HTTP, decoding, stitching or peak
picking.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.core.model import InferenceOptions, OnnxModel
from app.core.windows import WindowPlan
from benchmarks.loadgen import make_signals

LONG = 1_000_000  # the long case's default length
# Between two requests at concurrency 1 a server's inference thread waits about this long.
PACED_PAUSE_S = 0.0005


def window_batches(signal: np.ndarray, plan: WindowPlan, max_batch_samples: int) -> list[np.ndarray]:
    """The float32 batches the service's ``score_pieces`` would run for one long signal."""
    groups: dict[int, list[np.ndarray]] = defaultdict(list)
    for piece in plan.split(0, signal.size):
        groups[piece.length].append(signal[piece.start : piece.stop])
    batches = []
    for length, windows in groups.items():
        per_batch = max(1, max_batch_samples // length)
        for b in range(0, len(windows), per_batch):
            batches.append(np.stack(windows[b : b + per_batch]).astype(np.float32))
    return batches


def _rates(run: Callable[[], None], samples: int, duration: float, repeats: int) -> list[float]:
    """Samples per second of ``run`` in each repeat (each at least one call, about ``duration`` s)."""
    run()  # warm-up
    rates = []
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - t0 < duration:
            run()
            calls += 1
        rates.append(samples * calls / (time.perf_counter() - t0))
    return rates


def _parallel_rates(
    run: Callable[[], None], samples: int, duration: float, repeats: int, callers: int
) -> list[float]:
    """Samples per second of ``callers`` threads each running ``run`` over and over for about
    ``duration`` s (each at least once), in each repeat: onnxruntime releases the interpreter
    lock while it computes, so each caller keeps a core busy."""
    run()  # warm-up

    def caller(start: threading.Barrier, calls: list[int], i: int) -> None:
        start.wait()
        t0 = time.perf_counter()
        while calls[i] == 0 or time.perf_counter() - t0 < duration:
            run()
            calls[i] += 1

    rates = []
    for _ in range(repeats):
        calls = [0] * callers
        start = threading.Barrier(callers + 1)
        threads = [threading.Thread(target=caller, args=(start, calls, i)) for i in range(callers)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        rates.append(samples * sum(calls) / (time.perf_counter() - t0))
    return rates


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def call_latencies_ms(
    model: OnnxModel, batch: np.ndarray, calls: int, warm_up: int = 1, pause_s: float = 0.0
) -> np.ndarray:
    """Milliseconds of each of ``calls`` ``session.run`` calls on one batch: back to back, or
    each after ``pause_s`` of sleep (the pace of a server's inference thread at concurrency 1,
    which waits for the next request between calls)."""
    for _ in range(warm_up):
        model.session.run(["scores"], {"signal": batch})
    latencies = []
    for _ in range(calls):
        if pause_s:
            time.sleep(pause_s)
        t0 = time.perf_counter()
        model.session.run(["scores"], {"signal": batch})
        latencies.append(time.perf_counter() - t0)
    return np.asarray(latencies) * 1000


def latency_1x1024(model: OnnxModel, template: Sequence[float] | None, calls: int) -> dict[str, Any]:
    """Single-call latency of the 1x1024 signal: back to back ("latency_1x1024") and each call
    after a pause ("latency_1x1024_paced")."""
    batch = make_signals(1, 1024, template)
    out: dict[str, Any] = {}
    for key, pause in (("latency_1x1024", 0.0), ("latency_1x1024_paced", PACED_PAUSE_S)):
        ms = call_latencies_ms(model, batch, calls, pause_s=pause)
        out[key] = {
            "calls": calls,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
        }
        if pause:
            out[key]["pause_ms"] = pause * 1000
    return out


def measure_raw(
    model_dir: Path,
    options: InferenceOptions,
    template: Sequence[float] | None,
    duration: float,
    repeats: int,
    latency_calls: int,
    long_length: int = LONG,
    callers: int | None = None,
) -> dict[str, Any]:
    """Samples/s of each case with one caller (``samples_per_s``) and with ``callers`` (default:
    one per usable CPU) sharing the session (``samples_per_s_parallel``), and the better of the
    two (``best_samples_per_s``), the service's limit; the 1x1024 call's latencies."""
    callers = callers or usable_cpus()
    model = OnnxModel(model_dir, options)
    session = model.session
    long_key = f"1x{long_length}"
    long_signal = make_signals(1, long_length, template, seed=2)[0]
    cases = {
        "1x1024": [make_signals(1, 1024, template)],
        "64x1024": [make_signals(64, 1024, template, seed=1)],
        long_key: window_batches(long_signal, model.plan, options.max_batch_samples),
    }
    signal_samples = {"1x1024": 1024, "64x1024": 64 * 1024, long_key: long_length}
    out: dict[str, Any] = {"long_case": long_key}
    for name, batches in cases.items():

        def run(batches: list[np.ndarray] = batches) -> None:
            for b in batches:
                session.run(["scores"], {"signal": b})

        rates = _rates(run, signal_samples[name], duration, repeats)
        parallel = _parallel_rates(run, signal_samples[name], duration, repeats, callers)
        out[name] = {
            "samples_per_s": statistics.median(rates),
            "repeats": rates,
            "samples_per_s_parallel": statistics.median(parallel),
            "repeats_parallel": parallel,
            "best_samples_per_s": max(statistics.median(rates), statistics.median(parallel)),
            "calls_per_pass": len(batches),
            "window_samples_per_pass": int(sum(b.size for b in batches)),
            "batch_shapes": sorted({f"{b.shape[0]}x{b.shape[1]}" for b in batches}),
        }
    out.update(latency_1x1024(model, template, latency_calls))
    out["window"] = model.plan.window
    out["margin"] = model.plan.margin
    out["max_batch_samples"] = options.max_batch_samples
    out["intra_op_threads"] = options.intra_op_threads
    out["callers"] = callers
    return out
