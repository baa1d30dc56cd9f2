"""Dependencies: lifespan state handed to routes as ``Annotated`` aliases."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.responses import Response

from app.core.errors import BodyTooLarge, MalformedBody
from app.core.pipeline import Params, decode_request, respond
from app.core.registry import Registry
from app.core.signals import Limits
from app.observability import Metrics
from app.settings import Settings

INLINE_DECODE_BYTES = 64 * 1024  # smaller bodies are decoded on the event loop


@dataclass
class Runner:
    """Reads a detection body within its size limit; inference runs in the model's batcher thread."""

    executor: ThreadPoolExecutor
    limits: Limits
    max_body_bytes: int
    metrics: Metrics

    async def read_body(self, request: Request) -> bytes | bytearray:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise MalformedBody(f"Content-Length {declared!r} is not a number")
            if int(declared) > self.max_body_bytes:
                raise BodyTooLarge(self._too_large())
        if declared is not None:  # one buffer of the declared size: no second copy of a large body
            buffer = bytearray(int(declared))
            size = 0
            async for chunk in request.stream():
                if size + len(chunk) > len(buffer):
                    raise MalformedBody(f"body is longer than its Content-Length {declared}")
                buffer[size : size + len(chunk)] = chunk
                size += len(chunk)
            if size != len(buffer):
                raise MalformedBody(f"body has {size} bytes but its Content-Length is {declared}")
            return buffer
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge(self._too_large())
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> str:
        return (
            f"body larger than {self.max_body_bytes} bytes (SHAPE_DETECTOR_MAX_BODY_BYTES): "
            "send fewer signals per request or use the more compact application/x-npy"
        )

    async def detect(self, request: Request, registry: Registry, name: str, query: Params) -> Response:
        """Read, decode, queue for the model's batcher, and answer with its JSON."""
        model = registry.get(name)
        batcher = registry.batcher(name)
        body = await self.read_body(request)
        started = time.perf_counter()
        content_type = request.headers.get("content-type")
        if len(body) <= INLINE_DECODE_BYTES:  # cheaper than a hop to a thread
            decoded = decode_request(model.card, content_type, body, query, self.limits)
        else:
            decoded = await asyncio.get_running_loop().run_in_executor(
                self.executor, decode_request, model.card, content_type, body, query, self.limits
            )
        request.state.signals = len(decoded.signals)
        request.state.samples = decoded.samples
        future = batcher.submit(decoded.signals, partial(respond, model.card, decoded))
        payload: bytes = await asyncio.wrap_future(future)
        self.metrics.inference.labels(name).observe(time.perf_counter() - started)
        self.metrics.signals.labels(name).inc(len(decoded.signals))
        self.metrics.samples.labels(name).inc(decoded.samples)
        return Response(payload, media_type="application/json")


def get_settings_state(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


def get_registry(request: Request) -> Registry:
    registry: Registry = request.state.registry
    return registry


def get_runner(request: Request) -> Runner:
    runner: Runner = request.state.runner
    return runner


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.state.metrics
    return metrics


def detect_query(
    threshold: Annotated[
        float | None, Query(gt=0, lt=1, description="Detection threshold (default: the card's).")
    ] = None,
    min_distance: Annotated[
        int | None, Query(ge=1, description="Least spacing of two peaks (default: the card's).")
    ] = None,
    return_scores: Annotated[bool | None, Query(description="Include per-sample probabilities.")] = None,
) -> Params:
    return Params(threshold, min_distance, return_scores)


SettingsDep = Annotated[Settings, Depends(get_settings_state)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
RunnerDep = Annotated[Runner, Depends(get_runner)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
QueryDep = Annotated[Params, Depends(detect_query)]
