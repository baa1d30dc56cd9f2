"""Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import MetricsDep, RegistryDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(m: MetricsDep, registry: RegistryDep) -> Response:
    """Requests by route and status, latencies, signals, samples, inference time, batches, models."""
    for name, status in registry.statuses.items():
        m.model_ready.labels(name).set(1 if status.state == "ready" else 0)
        if status.model is not None:
            m.model_info.labels(name, status.model.version).set(1)
        if status.batcher is not None:
            m.queue_depth.labels(name).set(status.batcher.queued)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
