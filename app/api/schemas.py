"""Request and response schemas of the /v1 API (for validation in tests and the OpenAPI docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.card import MAX_MIN_DISTANCE, Card


class DetectRequest(BaseModel):
    """A JSON detection request."""

    model_config = ConfigDict(extra="forbid")

    signals: list[list[float]] = Field(min_length=1, description="One or more signals; lengths may differ.")
    threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Least peak probability to report a peak (calibrated scale); default: the model card's.",
    )
    min_distance: int | None = Field(
        None,
        ge=1,
        le=MAX_MIN_DISTANCE,
        description="Least spacing of two peaks, samples; default: the card's.",
    )
    return_scores: bool = Field(
        False, description="Include the per-sample curve (on the calibrated peak-probability scale)."
    )


class ModelRef(BaseModel):
    name: str
    version: str


class Peak(BaseModel):
    index: int = Field(description="Sample index of the event's centre.")
    probability: float = Field(description="Calibrated probability that this peak is a true event.")


class SignalResult(BaseModel):
    probability: float = Field(
        description="Calibrated probability that the signal holds an event (from the curve's maximum)."
    )
    detected: bool = Field(description="True when at least one peak reaches the threshold.")
    peaks: list[Peak] = Field(description="Detected events, sorted by index.")
    scores: list[float] | None = Field(None, description="Per-sample probabilities (return_scores).")


class DetectResponse(BaseModel):
    model: ModelRef
    threshold: float
    min_distance: int
    results: list[SignalResult] = Field(description="One result per signal, in request order.")


class ModelList(BaseModel):
    default: str = Field(description="The model POST /v1/detect uses (SHAPE_DETECTOR_DEFAULT_MODEL).")
    models: list[Card]


class Message(BaseModel):
    detail: str


class ValidationDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationMessage(BaseModel):
    detail: list[ValidationDetail]


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str]
    reasons: list[str]


def example_signal(length: int = 300) -> list[float]:
    """The primer's figure: two bumps (t = 35, 255) and a tall spike (t = 150) in noise."""
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(length)
    x = rng.normal(0.0, 1.0, length)
    for c in (35, 255):
        s = t - c
        x += 4.0 * np.exp(-((s / 6) ** 2) / 2) * np.cos(2 * np.pi * s / 16) * (np.abs(s) <= 20)
    x[150] += 15.0
    return [round(float(v), 3) for v in x]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": Message,
        "description": "Malformed JSON or .npy body, or the Content-Type header given twice.",
    },
    404: {"model": Message, "description": "Unknown model."},
    413: {"model": Message, "description": "Body larger than SHAPE_DETECTOR_MAX_BODY_BYTES."},
    415: {
        "model": Message,
        "description": (
            "Content-Type is neither application/json nor application/x-npy, or the body is compressed "
            "(Content-Encoding other than identity, Transfer-Encoding other than chunked)."
        ),
    },
    422: {"model": ValidationMessage, "description": "The body parsed but its content is unusable."},
    503: {
        "model": Message,
        "description": (
            "The model is loading or failed to load (Retry-After: 5), its queue is full or the bodies "
            "in flight hold MAX_INFLIGHT_BYTES (Retry-After: 1), or the server is shutting down "
            "(Retry-After: 1)."
        ),
    },
}
