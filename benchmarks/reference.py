"""What the two reference servers (naive FastAPI, LitServe) share: the model, its card, the answer.

Plain onnxruntime and the card's JSON; peak picking is the service's own ``find_peaks`` so that
all three servers compute the same peaks. No windowing, no batching across requests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.core.peaks import find_peaks


class ReferenceModel:
    """``model.onnx`` in one onnxruntime session, plus the card's name, version and defaults."""

    def __init__(self, model_dir: Path, intra_op_threads: int = 0) -> None:
        card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
        self.name: str = card["name"]
        self.version: str = card["version"]
        self.threshold = float(card["threshold"])
        self.min_distance = int(card["min_distance"])
        self.min_length = int(card["min_length"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(
            str(model_dir / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Per-sample probabilities for a float32 batch (n, length)."""
        (scores,) = self.session.run(["scores"], {"signal": batch})
        return np.asarray(scores, dtype=np.float32)

    def result(
        self, curve: np.ndarray, threshold: float, min_distance: int, return_scores: bool
    ) -> dict[str, Any]:
        """One signal's entry of ``results`` (the service's contract)."""
        probability = float(curve.max())
        peaks = find_peaks(curve, threshold, min_distance)
        item: dict[str, Any] = {
            "probability": probability,
            "detected": probability >= threshold,
            "peaks": [
                {"index": i, "probability": p}
                for i, p in zip(peaks.index.tolist(), peaks.probability.tolist(), strict=True)
            ],
        }
        if return_scores:
            item["scores"] = curve.tolist()
        return item

    def response(self, results: list[dict[str, Any]], threshold: float, min_distance: int) -> dict[str, Any]:
        return {
            "model": {"name": self.name, "version": self.version},
            "threshold": threshold,
            "min_distance": min_distance,
            "results": results,
        }
