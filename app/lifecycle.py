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

At most ``SHUTDOWN_TIMEOUT_S`` after SIGTERM the process stops waiting and ends the requests
still running itself (``Lifecycle.cut_off``): it cancels each one's task, and
``DrainMiddleware`` turns that cancellation, and no other, into an answer: 503 with
``CUT_OFF_MESSAGE``, ``Retry-After`` and ``Connection: close``, logged and counted as any
response is (a request whose response had already begun cannot be answered: it is left
unfinished and the server closes its connection). Then uvicorn is told to stop as after a
drain: the lifespan's shutdown runs (the batchers close, the access log is written to its last
line) and the process exits 0. Should a request not end within ``CUT_OFF_GRACE_S`` of its
cancellation, uvicorn is told to stop without waiting (a second signal: its "force exit", which
skips the lifespan's shutdown), with a warning.

The app ends its requests rather than leave it to uvicorn's ``timeout_graceful_shutdown``: that
is unset under ``uvicorn --factory``, uvicorn runs the lifespan's shutdown without waiting for
the requests it cancelled to end, and logs a ``CancelledError`` escaping the app as an error
with its traceback. Nothing of uvicorn is used but its signal handler.

A second SIGTERM, or SIGINT (Ctrl-C), stops at once as uvicorn does.

The handler is installed by the application's lifespan, on top of the one uvicorn installs, so
it works with ``python -m app``, ``uvicorn --factory app.main:app_from_env`` and several
workers alike (each worker drains and ends its own requests); it is installed only in the main
thread (never under a TestClient).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, cast

from prometheus_client import CollectorRegistry, Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.security import error_body, json_response

log = logging.getLogger("shape_detector")
PROBES = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"})
DRAINING_MESSAGE = "the server is shutting down: retry on another instance"
CUT_OFF_MESSAGE = (
    "the server stopped at its shutdown timeout before answering this request: retry on another instance"
)
CUT_OFF_GRACE_S = 1.0  # for the requests cut off to end: they need one turn of the event loop
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
        self.requests: set[asyncio.Task[Any]] = set()  # the tasks of the requests in flight
        self.cut_off_requests: set[asyncio.Task[Any]] = set()  # those ``cut_off`` cancelled
        self.cut_off_grace = CUT_OFF_GRACE_S
        self._restore: Callable[[], None] | None = None
        if registry is not None:
            Gauge(
                "shape_detector_requests_in_flight", "HTTP requests being handled.", registry=registry
            ).set_function(lambda: self.in_flight)
            Gauge(
                "shape_detector_draining", "1 once SIGTERM has arrived (shutting down).", registry=registry
            ).set_function(lambda: 1 if self.draining else 0)

    @property
    def in_flight(self) -> int:
        return len(self.requests)

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

    async def cut_off(self) -> bool:
        """End the requests in flight: cancel their tasks, which ``DrainMiddleware`` answers 503,
        and wait up to ``cut_off_grace`` seconds for them to end. True if they all did."""
        tasks = set(self.requests)
        if not tasks:
            return True
        self.cut_off_requests |= tasks  # before the cancellations arrive: each knows it was cut off
        for task in tasks:
            task.cancel("cut off at the shutdown timeout")
        _, pending = await asyncio.wait(tasks, timeout=self.cut_off_grace)
        return not pending

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
        if await self.drained():
            log.info("drained: stopping")
            previous(sig, None)
            return
        log.error(
            "shutdown timeout: stopping with requests in flight",
            extra={"fields": {"in_flight": self.in_flight, "timeout_s": self.timeout}},
        )
        if await self.cut_off():
            # Each has ended (answered 503, or left unfinished) and its connection closes:
            # uvicorn stops as after a drain, with nothing to wait for, and runs the lifespan's
            # shutdown.
            previous(sig, None)
            return
        log.warning(
            "requests cut off at the shutdown timeout did not end: stopping without the "
            "lifespan's shutdown (the last access log lines may be lost)",
            extra={"fields": {"in_flight": self.in_flight, "grace_s": self.cut_off_grace}},
        )
        previous(sig, None)
        previous(signal.SIGINT, None)  # uvicorn: a second signal means do not wait


class DrainMiddleware:
    """Counts requests in flight; while draining, refuses new ones and closes connections; answers
    503 to those ``Lifecycle.cut_off`` ends at the shutdown timeout."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lifecycle = self.lifecycle
        if lifecycle.draining and scope["path"] not in PROBES:
            await _unavailable(send, scope["path"], DRAINING_MESSAGE)
            return

        started = False  # the response's start has gone to the server

        async def close_when_draining(message: Message) -> None:
            nonlocal started
            start = message["type"] == "http.response.start"
            if start and lifecycle.draining:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)
            started = started or start

        # An ASGI app under asyncio always runs in a task: the request is counted by it.
        task = cast("asyncio.Task[Any]", asyncio.current_task())
        lifecycle.requests.add(task)
        try:
            await self.app(scope, receive, close_when_draining)
        except asyncio.CancelledError:
            if task not in lifecycle.cut_off_requests:
                raise  # not ours to end (the server's own, say): as it came
            # Cut off at the shutdown timeout: the request ends here, with an answer (uvicorn
            # would log a CancelledError escaping the app as an error, with its traceback).
            task.uncancel()
            if not started:
                await _unavailable(send, scope["path"], CUT_OFF_MESSAGE)
            # Else its response had begun and cannot be answered: it stays unfinished, and the
            # server closes the connection (uvicorn says so in one line, without a traceback).
        finally:
            lifecycle.requests.discard(task)
            lifecycle.cut_off_requests.discard(task)


async def _unavailable(send: Send, path: str, message: str) -> None:
    """503 in the path's error format, to retry elsewhere; the connection closes after it."""
    headers = [(b"retry-after", b"1"), (b"connection", b"close")]
    for part in json_response(503, error_body(path, message), headers):
        await send(part)
