"""The application: lifespan (models, worker threads), routers, error handlers — nothing else."""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import admin, demo, docs, health, metrics, v1, v2
from app.api.deps import Runner
from app.api.routing import DirectRoutes, HeadAsGet, ServerErrors
from app.core.errors import DetectorError, InvalidInput, Overloaded
from app.core.model import InferenceOptions
from app.core.registry import Registry
from app.core.reload import reload_on_sighup
from app.core.signals import Limits
from app.cpu_latency import CpuLatencyRequest
from app.lifecycle import DrainMiddleware, Lifecycle
from app.observability import (
    AccessLog,
    Metrics,
    ModelCollector,
    ObservabilityMiddleware,
    configure_logging,
)
from app.security import (
    COMMON_HEADERS,
    ApiKeyMiddleware,
    ApiKeys,
    JsonCORSMiddleware,
    RefusalCors,
    SecurityHeadersMiddleware,
    cors_options,
    error_body,
    install_openapi,
    is_oip_path,
    load_api_keys,
    parse_origins,
)
from app.settings import Settings, get_settings

log = logging.getLogger("shape_detector")
INTERNAL_ERROR = "internal error; the request id is in X-Request-ID"
STATIC = Path(__file__).parent / "static"


class State(TypedDict):
    settings: Settings
    registry: Registry
    runner: Runner
    metrics: Metrics
    lifecycle: Lifecycle
    refusal_cors: RefusalCors | None  # the server's own answers' CORS headers (app/server.py)


def tune_gc(threshold: int, undo: ExitStack) -> None:
    """Collect rarer, and never again through what start-up made (undone by ``undo``).

    Each request leaves few objects behind, but Python's collector runs every 700 container
    allocations net, and the objects of the requests in flight live long enough to reach the
    oldest generation: under load it ran full collections of the whole start-up heap (the
    framework, pydantic's schemas, numpy), 30 ms each with the interpreter lock held. Measured
    at concurrency 32 (1×1024 JSON, 10 s): 0.7–0.8 s of collections with Python's defaults, at
    most one collection of the youngest generation with start-up frozen and a threshold of
    10 000 (benchmarks/README.md).
    """
    old = gc.get_threshold()
    gc.collect()  # start-up's garbage goes now, not into the frozen generation
    if gc.get_freeze_count() == 0:  # else the program froze its own objects: leave them so
        gc.freeze()
        undo.callback(gc.unfreeze)
    gc.set_threshold(threshold, old[1], old[2])
    undo.callback(gc.set_threshold, *old)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.LOG_LEVEL)
    app_metrics = Metrics()
    access = AccessLog()
    lifecycle = Lifecycle(
        timeout=settings.SHUTDOWN_TIMEOUT_S, delay=settings.SHUTDOWN_DELAY_S, registry=app_metrics.registry
    )
    keys = ApiKeys(load_api_keys(settings))
    origins = parse_origins(settings.CORS_ORIGINS)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        # Each thing is undone as soon as it is done (in reverse order at the end), so a start
        # that fails half way leaves nothing behind in the process: no CPU latency request held,
        # no collector registered, no thread running.
        with ExitStack() as undo:
            # Last, once everything else is undone: the batchers have finished, every line is written.
            undo.callback(log.info, "shut down: models closed, access log flushed")
            undo.callback(access.close)
            if settings.CPU_LATENCY_US is not None:  # first: a refused request stops the start at once
                undo.enter_context(CpuLatencyRequest(settings.CPU_LATENCY_US))
                log.info("holding a CPU latency request of %d us", settings.CPU_LATENCY_US)
            options = InferenceOptions(
                window=settings.WINDOW,
                max_batch_samples=settings.MAX_BATCH_SAMPLES,
                intra_op_threads=settings.INTRA_OP_THREADS,
                spinning=settings.ORT_SPINNING,
                max_signal_length=settings.MAX_SIGNAL_LENGTH,
            )
            registry = Registry(
                settings.MODEL_DIR,
                options,
                max_queue=settings.MAX_QUEUE,
                max_wait=settings.BATCH_WAIT_MS / 1000,
                workers=settings.INFERENCE_WORKERS,
            )
            models = ModelCollector(lambda: list(registry.statuses.values()))  # read at each scrape
            app_metrics.registry.register(models)
            undo.callback(app_metrics.registry.unregister, models)
            # Load in the background: /healthz answers at once, /readyz once models are warm.
            loader = threading.Thread(target=registry.load_all, name="model-loader", daemon=True)
            loader.start()

            def stop_models() -> None:
                registry.close()
                # A model still loading finishes (onnxruntime cannot be interrupted) and is not
                # served; the process must not exit while the loader is inside onnxruntime.
                loader.join(settings.SHUTDOWN_TIMEOUT_S)

            undo.callback(stop_models)
            executor = ThreadPoolExecutor(settings.DECODE_THREADS, thread_name_prefix="decode")
            undo.callback(executor.shutdown, wait=True, cancel_futures=True)
            runner = Runner(
                executor=executor,
                limits=Limits(settings.MAX_SIGNALS, settings.MAX_SAMPLES, settings.MAX_SIGNAL_LENGTH),
                max_body_bytes=settings.MAX_BODY_BYTES,
                max_inflight_bytes=settings.MAX_INFLIGHT_BYTES,
                metrics=app_metrics,
                body_timeout=settings.BODY_TIMEOUT_S,
                request_timeout=settings.REQUEST_TIMEOUT_S,
                inline_max_samples=settings.INLINE_MAX_SAMPLES,
                same_cpu_max_samples=settings.SAME_CPU_MAX_SAMPLES,
            )
            undo.callback(runner.same_cpu.release)
            lifecycle.install_signal_handler()  # SIGTERM drains first (only under a server, main thread)
            undo.callback(lifecycle.uninstall_signal_handler)
            if settings.WORKERS == 1:  # with several, uvicorn's supervisor takes SIGHUP: new workers
                restore = reload_on_sighup(registry, lambda: lifecycle.draining)
                if restore is not None:
                    undo.callback(restore)
            undo.callback(sys.setswitchinterval, sys.getswitchinterval())
            sys.setswitchinterval(settings.SWITCH_INTERVAL_MS / 1000)
            if settings.GC_THRESHOLD:
                tune_gc(settings.GC_THRESHOLD, undo)
            yield {
                "settings": settings,
                "registry": registry,
                "runner": runner,
                "metrics": app_metrics,
                "lifecycle": lifecycle,
                "refusal_cors": RefusalCors(origins) if origins else None,
            }

    app = FastAPI(
        title="Shape Detector",
        version="0.1.0",
        summary="Finds a known shape in 1-D signals with a 1-D CNN.",
        description=(
            "POST signals to `/v1/detect` (JSON or `.npy`); each gets the probability that it "
            "holds the shape and the sample index of every detected event."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Off: FastAPI looks for OpenTelemetry providers on every request otherwise (about 5 % of
        # one process's small-request throughput).
        telemetry=None if settings.OPENTELEMETRY else {"tracing": False, "metrics": False, "logs": False},
    )

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        """An unexpected error, logged with its traceback and answered 500 inside every layer
        (DirectRoutes, ServerErrors): the answer gets their headers (X-Request-ID among them)."""
        log.error(
            "unhandled error",
            exc_info=exc,
            extra={"fields": {"request_id": getattr(request.state, "request_id", None)}},
        )
        return JSONResponse(error_body(request.scope["path"], INTERNAL_ERROR), status_code=500)

    # Outermost last: observability sees every response, the security headers go on every answer
    # (CORS preflights and draining 503s included), CORS answers preflights without a key,
    # draining refuses new requests before any other work, keys are checked before the body is read,
    # and the detection routes are served right inside all of them (DirectRoutes). The other
    # requests go on to FastAPI through HeadAsGet and ServerErrors, which the hot path skips.
    app.add_middleware(ServerErrors, unexpected=internal_error)
    app.add_middleware(HeadAsGet)
    app.add_middleware(DirectRoutes, owner=app, unexpected=internal_error)
    if keys.enabled:  # no keys, no check: one layer less on every request
        app.add_middleware(ApiKeyMiddleware, keys=keys, protect_metrics=settings.PROTECT_METRICS)
    app.add_middleware(DrainMiddleware, lifecycle=lifecycle)
    if origins:
        app.add_middleware(JsonCORSMiddleware, **cors_options(origins))
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(ObservabilityMiddleware, metrics=app_metrics, access=access, owner=app)
    install_openapi(app, keys_enabled=keys.enabled, protect_metrics=settings.PROTECT_METRICS)
    v1.add_detection_routes(app)  # first: DirectRoutes serves them
    v2.add_infer_routes(app)
    app.include_router(v1.router)
    app.include_router(v2.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(docs.router)
    app.include_router(admin.router)
    app.include_router(demo.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(DetectorError)
    async def detector_error(request: Request, exc: DetectorError) -> JSONResponse:
        if isinstance(exc, InvalidInput):
            body: dict[str, object] = {
                "detail": [{"loc": list(exc.loc), "msg": exc.detail, "type": exc.kind}]
            }
        else:
            body = {"detail": exc.detail}
        headers = {"Retry-After": "1" if isinstance(exc, Overloaded) else "5"} if exc.status == 503 else None
        if exc.status == 408:  # the rest of a slow body is not awaited: close the connection
            headers = {"Connection": "close"}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Starlette's own errors, mostly its router's: 404 for no route, 405 for a method the
        route does not take. HEAD is taken wherever GET is (HeadAsGet): Allow says so. Under
        /v2 in the protocol's format, saying what to do; elsewhere as FastAPI answers them."""
        headers = dict(exc.headers or {})
        allow = headers.get("Allow")
        if allow is not None:
            methods = [m.strip() for m in allow.split(",")]
            if "GET" in methods and "HEAD" not in methods:
                headers["Allow"] = ", ".join([*methods, "HEAD"])
        path = request.scope["path"]
        if is_oip_path(path):
            allowed = headers.get("Allow")
            message = v2.routing_error(request.method, path, exc.status_code, exc.detail, allowed)
            return JSONResponse({"error": message}, status_code=exc.status_code, headers=headers or None)
        return await http_exception_handler(
            request, StarletteHTTPException(exc.status_code, exc.detail, headers or None)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        """An error in a middleware itself, the one case ServerErrors and DirectRoutes do not
        see: Starlette's server-error middleware, outside every layer, sends this answer and
        raises the error on to the server, which closes the connection. So it carries what the
        layers would have added (the request id, the security headers) and says the connection
        closes."""
        response = await internal_error(request, exc)
        request_id = getattr(request.state, "request_id", None)
        response.raw_headers.extend(COMMON_HEADERS)
        response.raw_headers.append((b"connection", b"close"))
        if request_id:
            response.raw_headers.append((b"x-request-id", request_id.encode("latin1")))
        return response

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory app.main:app_from_env``."""
    return create_app()
