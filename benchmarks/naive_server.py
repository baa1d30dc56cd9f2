"""A naive reference server: the FastAPI app one would write first, to compare the service with.

    python -m benchmarks.naive_server --port 8001 [--model-dir models/bump]

A pydantic body model (``signals: list[list[float]]``), the model loaded once at startup,
one ``session.run`` per signal in a plain ``def`` route (FastAPI runs it in its thread pool),
the service's peak picker with the card's threshold and min_distance, and the same response
JSON as POST /v1/detect. JSON only; no windowing, no batching across requests.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from benchmarks.reference import ReferenceModel


class DetectRequest(BaseModel):
    signals: list[list[float]] = Field(min_length=1)
    threshold: float | None = Field(None, gt=0, lt=1)
    min_distance: int | None = Field(None, ge=1)
    return_scores: bool = False


def create_app(model_dir: Path, intra_op_threads: int = 0) -> FastAPI:
    models: dict[str, ReferenceModel] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        models["default"] = ReferenceModel(model_dir, intra_op_threads)
        yield

    app = FastAPI(title="naive reference server", lifespan=lifespan)

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": "default" in models}

    @app.post("/v1/detect")
    def detect(request: DetectRequest) -> dict[str, Any]:
        model = models["default"]
        threshold = model.threshold if request.threshold is None else request.threshold
        min_distance = model.min_distance if request.min_distance is None else request.min_distance
        results = []
        for i, signal in enumerate(request.signals):
            if len(signal) < model.min_length:
                raise HTTPException(
                    422, f"signal {i} has {len(signal)} samples; the minimum is {model.min_length}"
                )
            curve = model.scores(np.asarray(signal, dtype=np.float32)[None])[0]
            results.append(model.result(curve, threshold, min_distance, request.return_scores))
        return model.response(results, threshold, min_distance)

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--model-dir", type=Path, default=Path("models/bump"))
    p.add_argument("--intra-op-threads", type=int, default=0, help="onnxruntime threads per call; 0: default")
    a = p.parse_args()
    app = create_app(a.model_dir, a.intra_op_threads)
    uvicorn.run(app, host=a.host, port=a.port, workers=1, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
