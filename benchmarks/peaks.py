"""Peak picking and the answer of a long signal at a low threshold: millions of peaks.

    python -m benchmarks.peaks                      # 1×10,000,000 samples, models/bump
    python -m benchmarks.peaks --length 1000000 --repeats 5

A client may ask for any threshold above 0: on a long signal a low one makes a local maximum of
about every third sample. The per-sample curve of the shipped model on a noise signal with
events (as the load generator makes them) is scored once; then, for the card's threshold and
spacing and for a threshold of 1e-6 with the card's spacing and with a spacing of 5 (as a
client gives them, on the calibrated scale; peaks are found on the raw curve with the
threshold mapped back, as the service finds them), two variants of the service's code take
turns (the machine's drift hits them alike):

- ``find_peaks``: the curve searched in one pass and the spacing settled by the greedy pass
  alone (``PART_SAMPLES`` and ``GREEDY_MAX_PEAKS`` past the curve's size), against the
  service's settings (parts of 2**20 samples; whole-array rounds before the greedy pass);
- the whole ``/v1`` answer (``respond_many``: peaks, calibration, JSON): with the above and one
  Python object per peak (``PEAKS_PER_PART`` past the peaks' count), against the service's.

Reports the median time and the peak memory traced while it runs (``tracemalloc``, in a run
of its own). Both variants must give the same peaks and the same bytes, or the run fails; it
never fails on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np

from app.core import peaks as peaks_module
from app.core import pipeline
from app.core.model import InferenceOptions, OnnxModel
from benchmarks.loadgen import make_signals

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("one pass, greedy, an object per peak", "the service's")


@contextlib.contextmanager
def variant(name: str, size: int) -> Iterator[None]:
    """The service's code as it runs (``VARIANTS[1]``) or with every part and round switched off."""
    if name == VARIANTS[1]:
        yield
        return
    with (
        patch.multiple(peaks_module, PART_SAMPLES=size, GREEDY_MAX_PEAKS=size),
        patch.object(pipeline, "PEAKS_PER_PART", size),
    ):
        yield


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def traced_peak(call: Callable[[], Any]) -> float:
    """Bytes of the largest traced allocation total while ``call`` runs, over what was before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        call()
        return float(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()


def measure(model_dir: Path, length: int, repeats: int) -> dict[str, Any]:
    model = OnnxModel(model_dir, InferenceOptions(intra_op_threads=1))
    card = model.card
    signal = make_signals(1, length, card.template)[0]
    curve = model.scores([signal])[0]
    cases = {
        f"card's threshold {card.threshold}, spacing {card.min_distance}": (
            card.threshold,
            card.min_distance,
        ),
        f"threshold 1e-6, spacing {card.min_distance}": (1e-6, card.min_distance),
        "threshold 1e-6, spacing 5": (1e-6, 5),
    }
    rows: list[dict[str, Any]] = []
    for case, (threshold, distance) in cases.items():
        raw = card.calibrator.peak.raw_threshold(threshold)  # as the service maps a client's threshold
        stages: dict[str, Callable[[], Any]] = {
            "find_peaks": lambda t=raw, d=distance: peaks_module.find_peaks(curve, t, d),
            "the /v1 answer": lambda t=threshold, d=distance: pipeline.respond_many(
                card, [(pipeline.Decoded([signal], t, d, False), [curve])]
            ),
        }
        count = len(peaks_module.find_peaks(curve, raw, distance))
        for stage, call in stages.items():
            times: dict[str, list[float]] = {name: [] for name in VARIANTS}
            outputs: dict[str, Any] = {}
            for _ in range(repeats):
                for name in VARIANTS:
                    with variant(name, curve.size):
                        out, seconds = timed(call)
                    times[name].append(seconds)
                    outputs[name] = out
            first, second = (outputs[name] for name in VARIANTS)
            if stage == "find_peaks":
                same = np.array_equal(first.index, second.index) and np.array_equal(
                    first.probability, second.probability
                )
            else:
                same = first == second
            if not same:
                raise AssertionError(f"{case}, {stage}: the variants disagree")
            for name in VARIANTS:
                with variant(name, curve.size):
                    peak = traced_peak(call)
                rows.append(
                    {
                        "case": case,
                        "peaks": count,
                        "stage": stage,
                        "variant": name,
                        "median_s": statistics.median(times[name]),
                        "peak_mib": peak / 2**20,
                    }
                )
    return {
        "model": {"name": card.name, "version": card.version},
        "length": length,
        "repeats": repeats,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["model"]
    lines = [
        f"Model {m['name']} {m['version']}, one signal of {result['length']:,} samples, medians of "
        f"{result['repeats']} turns; memory: the peak traced over the curve and the signal:",
        "",
        "| case | peaks | stage | variant | time | peak memory |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['case']} | {r['peaks']:,} | {r['stage']} | {r['variant']} | {r['median_s']:.3f} s "
            f"| {r['peak_mib']:.0f} MiB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "bump")
    p.add_argument("--length", type=int, default=10_000_000, help="samples of the signal")
    p.add_argument("--repeats", type=int, default=3, help="turns of the two variants")
    a = p.parse_args(argv)
    print(markdown(measure(a.model_dir, a.length, a.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
