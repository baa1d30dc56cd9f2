"""Graceful shutdown: on SIGTERM, drain first, then let uvicorn stop.

uvicorn alone closes its listening socket the moment SIGTERM arrives, so a load balancer that
still sends requests gets "connection refused", and readiness can never be seen failing. Here
SIGTERM starts a *draining* phase instead:

1. readiness (``/readyz``, ``/v2/health/ready``) answers 503 at once;
2. requests already in flight run to completion;
3. new requests (except health probes and /metrics) get 503 with ``Retry-After`` and
   ``Connection: close``, so clients and proxies retry on another instance;
4. once nothing is in flight and at least ``SHUTDOWN_DELAY_S`` has passed, uvicorn is told to
   stop (its handler for the signal is called): it closes the port and the connections, runs
   the lifespan's shutdown and the process exits 0.

At most ``SHUTDOWN_TIMEOUT_S`` after SIGTERM the process stops waiting: uvicorn is told to
stop without waiting for the requests still running (they are cut off and logged). A second
SIGTERM, or SIGINT (Ctrl-C), stops at once as uvicorn does.

The handler is installed by the application's lifespan, on top of the one uvicorn installs, so
it works with ``python -m app``, ``uvicorn --factory app.main:app_from_env`` and several
workers alike; it is installed only in the main thread (never under a TestClient).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.security import error_body, json_response

log = logging.getLogger("shape_detector")
PROBES = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"})
DRAINING_MESSAGE = "the server is shutting down: retry on another instance"
Handler = Callable[[int, FrameType | None], Any]


class Lifecycle:
    """Draining state and the number of requests in flight, for one application."""

    def __init__(
        self, *, timeout: float, delay: float = 0.0, registry: CollectorRegistry | None = None
    ) -> None:
        self.timeout = timeout
        self.delay = delay
        self.draining = False
        self.drain_started: float | None = None
        self.in_flight = 0
        self._restore: Callable[[], None] | None = None
        if registry is not None:
            Gauge(
                "shape_detector_requests_in_flight", "HTTP requests being handled.", registry=registry
            ).set_function(lambda: self.in_flight)
            Gauge(
                "shape_detector_draining", "1 once SIGTERM has arrived (shutting down).", registry=registry
            ).set_function(lambda: 1 if self.draining else 0)

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            self.drain_started = time.monotonic()

    async def drained(self) -> bool:
        """Wait until nothing is in flight and the delay has passed: True; at the timeout: False."""
        started = self.drain_started if self.drain_started is not None else time.monotonic()
        earliest, deadline = started + self.delay, started + self.timeout
        while time.monotonic() < deadline:
            if self.in_flight == 0 and time.monotonic() >= earliest:
                return True
            await asyncio.sleep(0.05)
        return self.in_flight == 0

    def install_signal_handler(self) -> bool:
        """Drain on SIGTERM, then call the handler that was there (uvicorn's); True if installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):  # not under a server that stops on SIGTERM: leave it alone
            return False
        loop = asyncio.get_running_loop()

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            if self.draining:  # a second SIGTERM: stop now
                previous(sig, frame)
                return
            self.begin_drain()
            loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_stop(previous, sig)))

        signal.signal(signal.SIGTERM, on_sigterm)

        def restore() -> None:
            if signal.getsignal(signal.SIGTERM) is on_sigterm:
                signal.signal(signal.SIGTERM, previous)

        self._restore = restore
        return True

    def uninstall_signal_handler(self) -> None:
        if self._restore is not None and threading.current_thread() is threading.main_thread():
            self._restore()
            self._restore = None

    async def _drain_then_stop(self, previous: Handler, sig: int) -> None:
        log.info(
            "SIGTERM: draining (readiness 503, new requests 503)",
            extra={"fields": {"in_flight": self.in_flight, "timeout_s": self.timeout}},
        )
        finished = await self.drained()
        if finished:
            log.info("drained: stopping")
            previous(sig, None)
        else:
            log.error(
                "shutdown timeout: stopping with requests in flight",
                extra={"fields": {"in_flight": self.in_flight, "timeout_s": self.timeout}},
            )
            previous(sig, None)
            previous(signal.SIGINT, None)  # uvicorn: a second signal means do not wait


class DrainMiddleware:
    """Counts requests in flight; while draining, refuses new ones and closes connections."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lifecycle = self.lifecycle
        if lifecycle.draining and scope["path"] not in PROBES:
            headers = [(b"retry-after", b"1"), (b"connection", b"close")]
            for message in json_response(503, error_body(scope["path"], DRAINING_MESSAGE), headers):
                await send(message)
            return

        async def close_when_draining(message: Message) -> None:
            if message["type"] == "http.response.start" and lifecycle.draining:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        lifecycle.in_flight += 1
        try:
            await self.app(scope, receive, close_when_draining)
        finally:
            lifecycle.in_flight -= 1
