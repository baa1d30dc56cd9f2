"""What the two reference servers (naive FastAPI, LitServe) share: the model, its card, the answer.

Plain onnxruntime and the card; the post-processing is the service's own ``detections`` (peak
picking and the card's calibration maps) so that all three servers give the same answer. No
windowing, no batching across requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.core.card import load_card
from app.core.model import detections


class ReferenceModel:
    """``model.onnx`` in one onnxruntime session, plus the card's name, version and defaults."""

    def __init__(self, model_dir: Path, intra_op_threads: int = 0) -> None:
        card = load_card(model_dir)
        self.calibrator = card.calibrator
        self.name: str = card.name
        self.version: str = card.version
        self.threshold = card.threshold
        self.min_distance = card.min_distance
        self.min_length = card.min_length
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
        (d,) = detections(
            [curve], threshold, min_distance, calibrator=self.calibrator, return_scores=return_scores
        )
        item: dict[str, Any] = {
            "probability": d.probability,
            "detected": d.detected,
            "peaks": [
                {"index": i, "probability": p}
                for i, p in zip(d.peaks.index.tolist(), d.peaks.probability.tolist(), strict=True)
            ],
        }
        if d.scores is not None:
            item["scores"] = d.scores.tolist()
        return item

    def response(self, results: list[dict[str, Any]], threshold: float, min_distance: int) -> dict[str, Any]:
        return {
            "model": {"name": self.name, "version": self.version},
            "threshold": threshold,
            "min_distance": min_distance,
            "results": results,
        }

    def answer(self, signals: np.ndarray) -> dict[str, Any]:
        """The answer of POST /v1/detect for ``signals`` (n, length) at the card's defaults: what
        every server must send back for them (one onnxruntime call per signal, no windowing)."""
        results = [
            self.result(
                self.scores(np.asarray(s, dtype=np.float32)[None])[0],
                self.threshold,
                self.min_distance,
                False,
            )
            for s in signals
        ]
        return self.response(results, self.threshold, self.min_distance)
