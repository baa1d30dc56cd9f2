"""Raw onnxruntime throughput of a model against the matched-filter pipeline, side by side.

    python -m benchmarks.bench_model [--model models/bump] [--signals 400] [--repeats 7]

Both run in this process on the same held-out signals (the white suite: lengths 256-2048),
on one core each: the model as one single-threaded onnxruntime call per signal, and as
(64, 1024) batches; the matched filter as median / MAD normalisation + correlation with the
template in numpy, one signal at a time.
Reports medians over the repeats and the ratio model / matched filter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.core.card import load_card
from training.evaluate import matched_filter
from training.scenario import EVAL_SEEDS, Template, make_dataset, suites


def timed(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/bump"))
    p.add_argument("--signals", type=int, default=400)
    p.add_argument("--repeats", type=int, default=7)
    # One thread: the matched filter is single-threaded numpy, so both get one core.
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0: one per core)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/model_vs_matched_filter.json"))
    a = p.parse_args()

    card = load_card(a.model)
    template = Template(np.asarray(card.template), int(card.template_center or 0))
    data = make_dataset(suites(template)["white"], a.signals, EVAL_SEEDS["white"])
    signals32 = [x.astype(np.float32) for x in data.signals]
    samples = sum(x.size for x in data.signals)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(str(a.model / "model.onnx"), so, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)

    def run_model() -> None:
        for x in signals32:
            sess.run(["scores"], {"signal": x[None]})

    def run_batched() -> None:
        sess.run(["scores"], {"signal": batch})

    def run_mf() -> None:
        for x in data.signals:
            matched_filter(x, template)

    t_model = statistics.median(timed(run_model, a.repeats))
    t_batch = statistics.median(timed(run_batched, a.repeats))
    t_mf = statistics.median(timed(run_mf, a.repeats))
    result = {
        "model": f"{card.name} {card.version}",
        "macs_per_sample": card.macs_per_sample,
        "signals": a.signals,
        "samples": samples,
        "onnxruntime_per_signal_samples_per_s": samples / t_model,
        "onnxruntime_batch_64x1024_samples_per_s": batch.size / t_batch,
        "matched_filter_samples_per_s": samples / t_mf,
        "ratio_model_per_signal_over_matched_filter": t_mf / t_model,
        "ratio_model_batched_over_matched_filter": (batch.size / t_batch) / (samples / t_mf),
        "repeats": a.repeats,
        "onnxruntime_threads": a.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
        f"onnxruntime {ort.__version__}, numpy {np.__version__}",
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result.items():
        print(f"{k:48s} {v:,.3f}" if isinstance(v, float) else f"{k:48s} {v}")


if __name__ == "__main__":
    main()
