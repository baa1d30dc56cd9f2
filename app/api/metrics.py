"""Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(m: MetricsDep) -> Response:
    """Requests by route and status, latencies, signals, samples, inference time, batches, models."""
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
