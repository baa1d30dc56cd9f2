"""Dependencies: lifespan state handed to routes as ``Annotated`` aliases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Query, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from app.core.batching import Finish
from app.core.errors import BodyTooLarge, MalformedBody, Overloaded, UnsupportedMediaType
from app.core.model import OnnxModel
from app.core.pipeline import Params, decode_request, respond
from app.core.registry import Registry
from app.core.signals import Body, Limits, Signal
from app.core.timeouts import ClientClosedRequest, body_timeout, deadline_exceeded, time_limit
from app.lifecycle import Lifecycle
from app.observability import Metrics
from app.settings import Settings

INLINE_DECODE_BYTES = 64 * 1024  # smaller bodies are decoded on the event loop
SWAP_RETRIES = 3  # a model reloaded between decoding and queueing: decode again for the new one


class DecodedRequest(Protocol):
    @property
    def signals(self) -> list[Signal]: ...

    @property
    def samples(self) -> int: ...


D = TypeVar("D", bound=DecodedRequest)


@dataclass
class Runner:
    """Reads a detection body within its size and time limits; inference runs in the model's
    batcher thread, within the request's deadline."""

    executor: ThreadPoolExecutor
    limits: Limits
    max_body_bytes: int
    metrics: Metrics
    body_timeout: float = 60.0
    request_timeout: float = 60.0

    async def read_body(self, request: Request) -> bytes | bytearray:
        """The whole body, within MAX_BODY_BYTES and BODY_TIMEOUT_S; uncompressed only."""
        encoding = request.headers.get("content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            raise UnsupportedMediaType(
                f"Content-Encoding {encoding!r} is not supported: send the body uncompressed"
            )
        try:
            async with time_limit(self.body_timeout, body_timeout(self.body_timeout)):
                return await self._read_body(request)
        except ClientDisconnect:
            raise ClientClosedRequest(
                "the client closed the connection before its body was complete"
            ) from None

    async def _read_body(self, request: Request) -> bytes | bytearray:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise MalformedBody(f"Content-Length {declared!r} is not a number")
            if int(declared) > self.max_body_bytes:
                raise BodyTooLarge(self._too_large())
            # One buffer of the declared size: no second copy of a large body.
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
        registry.get(name)  # 404 or 503 before reading the body
        body = await self.read_body(request)
        content_type = request.headers.get("content-type")

        def decode(model: OnnxModel) -> Any:
            return decode_request(model.card, content_type, body, query, self.limits)

        def finish(model: OnnxModel, decoded: Any) -> Finish:
            return partial(respond, model.card, decoded)

        payload: bytes = await self.run(request, registry, name, body, decode, finish)
        return Response(payload, media_type="application/json")

    async def run(
        self,
        request: Request,
        registry: Registry,
        name: str,
        body: Body,
        decode: Callable[[OnnxModel], D],
        finish: Callable[[OnnxModel, D], Finish],
    ) -> Any:
        """Decode for the model now serving ``name``, queue for its batcher, await the result,
        all within REQUEST_TIMEOUT_S (504 after; a request still queued is dropped unrun)."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        async with time_limit(self.request_timeout, deadline_exceeded(self.request_timeout)):
            for _ in range(SWAP_RETRIES):
                model = registry.get(name)
                if len(body) <= INLINE_DECODE_BYTES:  # cheaper than a hop to a thread
                    decoded = decode(model)
                else:
                    decoded = await loop.run_in_executor(self.executor, decode, model)
                future = registry.submit(name, model, decoded.signals, finish(model, decoded))
                if future is not None:
                    break
            else:
                raise Overloaded(f"model {name!r} is being reloaded; retry shortly")
            request.state.signals = len(decoded.signals)
            request.state.samples = decoded.samples
            result = await asyncio.wrap_future(future)
        self.metrics.inference.labels(name).observe(time.perf_counter() - started)
        self.metrics.signals.labels(name).inc(len(decoded.signals))
        self.metrics.samples.labels(name).inc(decoded.samples)
        return result


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


def get_lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.state.lifecycle
    return lifecycle


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
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
QueryDep = Annotated[Params, Depends(detect_query)]
