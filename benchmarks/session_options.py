"""onnxruntime's graph optimisation, measured: the levels, and a model optimised ahead of time.

    python -m benchmarks.session_options                 # models/bump
    python -m benchmarks.session_options --model-dir models/arrival

For each graph optimisation level (what ``SessionOptions.graph_optimization_level`` does when
the session is made) and for the model optimised once and saved (``optimized_model_filepath``,
as an export step could ship it, then loaded with optimisation off), and for onnxruntime's
memory pattern (its default, off in the service: it keeps a plan per input shape, never freed):
the time to make the session, the median latency of one 1×1024 call back to back, and 64×1024 samples/s. One
onnxruntime thread per call, as the service runs by default. Every variant must give the same
scores as the service's session (within float32 rounding: fused kernels add in another order),
or the run fails. Reports; never fails on timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.core.card import MODEL_FILE, load_card
from app.core.model import InferenceOptions, session_options
from benchmarks.loadgen import make_signals

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("session_s", "p50_1x1024_ms", "samples_per_s_64x1024")
LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all (the service's)": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


MEMORY_PATTERN = "all, with onnxruntime's memory pattern (its default; not the service's)"


def options(
    level: ort.GraphOptimizationLevel, save_to: Path | None = None, memory_pattern: bool = False
) -> ort.SessionOptions:
    """The service's session options (one thread per call, its default) at another level."""
    so = session_options(InferenceOptions(intra_op_threads=1))
    so.graph_optimization_level = level
    so.enable_mem_pattern = memory_pattern
    if save_to is not None:
        so.optimized_model_filepath = str(save_to)
    return so


def session(path: Path, so: ort.SessionOptions) -> tuple[ort.InferenceSession, float]:
    t0 = time.perf_counter()
    made = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return made, time.perf_counter() - t0


def timings(s: ort.InferenceSession, one: np.ndarray, batch: np.ndarray, calls: int) -> dict[str, float]:
    for _ in range(20):
        s.run(["scores"], {"signal": one})
    latencies = []
    for _ in range(calls):
        t0 = time.perf_counter()
        s.run(["scores"], {"signal": one})
        latencies.append(time.perf_counter() - t0)
    s.run(["scores"], {"signal": batch})
    rounds = max(5, calls // 100)
    t0 = time.perf_counter()
    for _ in range(rounds):
        s.run(["scores"], {"signal": batch})
    return {
        "p50_1x1024_ms": statistics.median(latencies) * 1000,
        "samples_per_s_64x1024": batch.size * rounds / (time.perf_counter() - t0),
    }


def measure(model_dir: Path, calls: int = 2000, repeats: int = 3) -> dict[str, Any]:
    card = load_card(model_dir)
    template = list(card.template) if card.template else None
    one = make_signals(1, 1024, template).astype(np.float32)
    batch = make_signals(64, 1024, template, seed=1).astype(np.float32)
    model = model_dir / MODEL_FILE
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="shape-ort-") as tmp:
        saved = Path(tmp) / "optimized.onnx"
        # The model optimised once ("all"), saved, and loaded with optimisation off. onnxruntime
        # warns that such a file may hold optimisations for this CPU only: that is the point
        # measured, and the reason the service does not ship one; the warning is not repeated.
        saving = options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL, save_to=saved)
        saving.log_severity_level = 3  # errors only, for this session
        session(model, saving)
        variants = {name: (model, level, False) for name, level in LEVELS.items()}
        variants["optimised ahead of time, loaded with optimisation off"] = (
            saved,
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            False,
        )
        variants[MEMORY_PATTERN] = (model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, True)
        reference, _ = session(model, options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL))
        expected = reference.run(["scores"], {"signal": batch})[0]
        for _ in range(repeats):  # the variants take turns: the machine's drift hits them alike
            for name, (path, level, pattern) in variants.items():
                s, made_s = session(path, options(level, memory_pattern=pattern))
                scores = s.run(["scores"], {"signal": batch})[0]
                np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6, err_msg=name)
                row = rows.setdefault(name, {key: [] for key in KEYS})
                row["session_s"].append(made_s)
                for key, value in timings(s, one, batch, calls).items():
                    row[key].append(value)
        saved_bytes = saved.stat().st_size
    return {
        "model": {"name": card.name, "version": card.version, "bytes": model.stat().st_size},
        "optimised_bytes": saved_bytes,
        "calls": calls,
        "repeats": repeats,
        "variants": {name: {k: statistics.median(v) for k, v in row.items()} for name, row in rows.items()},
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["model"]
    lines = [
        f"Model {m['name']} {m['version']} ({m['bytes']:,} bytes; optimised ahead of time "
        f"{result['optimised_bytes']:,} bytes), one onnxruntime thread, medians of {result['repeats']} "
        "turns:",
        "",
        "| graph optimisation | session made in | 1×1024 call, p50 | 64×1024 samples/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, v in result["variants"].items():
        lines.append(
            f"| {name} | {v['session_s'] * 1000:.1f} ms | {v['p50_1x1024_ms']:.3f} ms "
            f"| {v['samples_per_s_64x1024'] / 1e6:.2f} M |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "bump")
    p.add_argument("--calls", type=int, default=2000, help="1x1024 calls per variant and turn")
    p.add_argument("--repeats", type=int, default=3, help="turns over all variants")
    a = p.parse_args(argv)
    print(markdown(measure(a.model_dir, a.calls, a.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
