"""The same model and response contract served by LitServe, to compare the service with.

    python -m benchmarks.litserve_server --port 8002 [--model-dir models/bump]

One inference worker and one API server process (LitServe's own uvicorn), POST /predict with
the JSON body of /v1/detect. ``predict`` runs a request's signals in one onnxruntime call
when they all have the same length (one call per signal otherwise); peaks come from the
service's peak picker with the card's threshold and min_distance. LitServe's own request
batching stays off (max_batch_size=1): requests hold different numbers of signals.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
from fastapi import HTTPException

from benchmarks.reference import ReferenceModel

FIELDS = {"signals", "threshold", "min_distance", "return_scores"}


class DetectAPI(ls.LitAPI):
    def __init__(self, model_dir: Path, intra_op_threads: int = 0) -> None:
        super().__init__()
        self.model_dir = model_dir
        self.intra_op_threads = intra_op_threads

    def setup(self, device: str) -> None:
        self.model = ReferenceModel(self.model_dir, self.intra_op_threads)

    # LitServe reads the annotations of decode_request's ``request`` and encode_response's return
    # value as FastAPI types: none means the plain JSON body in and the returned dict as JSON out.
    def decode_request(self, request, **kwargs):  # type: ignore[no-untyped-def]
        if not isinstance(request, dict) or not set(request) <= FIELDS or "signals" not in request:
            raise HTTPException(
                422, f"send a JSON object with 'signals' and optionally {sorted(FIELDS - {'signals'})}"
            )
        try:
            signals = [np.asarray(s, dtype=np.float32) for s in request["signals"]]
        except (TypeError, ValueError) as exc:
            raise HTTPException(422, f"signals must be lists of numbers: {exc}") from None
        if not signals or any(s.ndim != 1 or s.size < self.model.min_length for s in signals):
            raise HTTPException(422, f"send one or more signals of at least {self.model.min_length} numbers")
        threshold = request.get("threshold")
        min_distance = request.get("min_distance")
        return {
            "signals": signals,
            "threshold": self.model.threshold if threshold is None else float(threshold),
            "min_distance": self.model.min_distance if min_distance is None else int(min_distance),
            "return_scores": bool(request.get("return_scores", False)),
        }

    def predict(self, x: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        signals = x["signals"]
        if len({s.size for s in signals}) == 1:
            curves = list(self.model.scores(np.stack(signals)))
        else:
            curves = [self.model.scores(s[None])[0] for s in signals]
        return {**x, "curves": curves}

    def encode_response(self, output, **kwargs):  # type: ignore[no-untyped-def]
        thr, dist = output["threshold"], output["min_distance"]
        results = [self.model.result(c, thr, dist, output["return_scores"]) for c in output["curves"]]
        return self.model.response(results, thr, dist)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--model-dir", type=Path, default=Path("models/bump"))
    p.add_argument("--intra-op-threads", type=int, default=0, help="onnxruntime threads per call; 0: default")
    a = p.parse_args()
    api = DetectAPI(a.model_dir, a.intra_op_threads)
    # timeout=False: no server-side request timeout (the service has none; the client has its own).
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=False)
    server.run(host=a.host, port=a.port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
