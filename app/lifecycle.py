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

SIGINT (Ctrl-C) drains as SIGTERM does but closes the port at once, as uvicorn does (uvicorn is
told to stop); a second SIGTERM closes it then. Either way the requests in flight run on until
they end or the shutdown timeout cuts them off, as above. Ctrl-C once the port is closed is
uvicorn's "force exit", which stops waiting for the requests and cancels them as the process
ends, each a 500 and a traceback: here it ends them first, at once, as the cut-off does (503
with ``STOPPED_MESSAGE``), and uvicorn is forced only if they do not end within
``CUT_OFF_GRACE_S`` (or at once if nothing is in flight: there is nothing to answer). uvicorn's
own timeout (``timeout_graceful_shutdown``, which ``python -m app`` sets past the shutdown
timeout and the grace) cancels nothing then: every request has ended before it.

The handler is installed by the application's lifespan, on top of the one uvicorn installs (for
SIGINT too when uvicorn's handles it), so it works with ``python -m app``, ``uvicorn --factory
app.main:app_from_env`` and several workers alike (each worker drains and ends its own
requests); it is installed only in the main thread (never under a TestClient).
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

from app.security import METRICS_PATH, error_body, json_response

log = logging.getLogger("shape_detector")
PROBES = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"})
DRAINING_MESSAGE = "the server is shutting down: retry on another instance"
CUT_OFF_MESSAGE = (
    "the server stopped at its shutdown timeout before answering this request: retry on another instance"
)
STOPPED_MESSAGE = (
    "the server was told to stop at once before answering this request: retry on another instance"
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
        self.stopping = False  # the server has been told to stop: its port is closed
        self.ending_now = False  # told to end the requests in flight at once (Ctrl-C while stopping)
        self.requests: set[asyncio.Task[Any]] = set()  # the tasks of the requests in flight
        self.scrapes = 0  # of those, the ones reading /metrics: not the service's work
        # Those ``cut_off`` cancelled, each with the message it is answered.
        self.cut_off_requests: dict[asyncio.Task[Any], str] = {}
        self.cut_off_grace = CUT_OFF_GRACE_S
        self._restore: Callable[[], None] | None = None
        if registry is not None:
            Gauge(
                "shape_detector_requests_in_flight",
                "HTTP requests being handled; scrapes of /metrics are not counted.",
                registry=registry,
            ).set_function(lambda: self.in_flight - self.scrapes)
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
        """Wait until nothing is in flight and the delay has passed: True; at the timeout, or once
        told to end the requests in flight now (``ending_now``) with some still running: False."""
        started = self.drain_started if self.drain_started is not None else time.monotonic()
        earliest, deadline = started + self.delay, started + self.timeout
        while time.monotonic() < deadline and not self.ending_now:
            if self.in_flight == 0 and time.monotonic() >= earliest:
                return True
            await asyncio.sleep(0.05)
        return self.in_flight == 0

    async def cut_off(self, message: str = CUT_OFF_MESSAGE) -> bool:
        """End the requests in flight: cancel their tasks, which ``DrainMiddleware`` answers 503
        with ``message``, and wait up to ``cut_off_grace`` seconds for them to end. True if they
        all did."""
        tasks = set(self.requests)
        if not tasks:
            return True
        # Before the cancellations arrive: each knows it was cut off.
        self.cut_off_requests.update(dict.fromkeys(tasks, message))
        for task in tasks:
            task.cancel("cut off: the server is stopping")
        _, pending = await asyncio.wait(tasks, timeout=self.cut_off_grace)
        return not pending

    def install_signal_handler(self) -> bool:
        """Drain on SIGTERM, then call the handler that was there (uvicorn's); on SIGINT too when
        that handler takes it. True if installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):  # not under a server that stops on SIGTERM: leave it alone
            return False
        signals = [signal.SIGTERM]
        if signal.getsignal(signal.SIGINT) == previous:  # uvicorn's: one handler for both
            signals.append(signal.SIGINT)
        loop = asyncio.get_running_loop()

        def on_signal(sig: int, frame: FrameType | None) -> None:
            if not self.draining:  # the first signal
                self.begin_drain()
                if sig == signal.SIGINT:  # Ctrl-C: the port closes at once
                    self._stop_server(previous, sig)
                loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_stop(previous, sig)))
            elif not self.stopping:  # a second: the port closes now
                self._stop_server(previous, sig)
            elif sig == signal.SIGINT:  # uvicorn's force exit
                if self.in_flight and not self.ending_now:
                    self.ending_now = True  # ``_drain_then_stop`` ends them, then forces if need be
                else:
                    previous(sig, frame)

        for sig in signals:
            signal.signal(sig, on_signal)

        def restore() -> None:
            for sig in signals:
                if signal.getsignal(sig) is on_signal:
                    signal.signal(sig, previous)

        self._restore = restore
        return True

    def uninstall_signal_handler(self) -> None:
        if self._restore is not None and threading.current_thread() is threading.main_thread():
            self._restore()
            self._restore = None

    def _stop_server(self, previous: Handler, sig: int) -> None:
        """Tell the server to stop (uvicorn: close the port, wait for the connections, run the
        lifespan's shutdown), once: uvicorn takes a second SIGINT as its force exit."""
        if not self.stopping:
            self.stopping = True
            previous(sig, None)

    async def _drain_then_stop(self, previous: Handler, sig: int) -> None:
        fields = {"in_flight": self.in_flight, "timeout_s": self.timeout}
        if sig == signal.SIGINT:
            log.info(
                "SIGINT: stopping (the port closes; requests in flight have until the timeout)",
                extra={"fields": fields},
            )
        else:
            log.info("SIGTERM: draining (readiness 503, new requests 503)", extra={"fields": fields})
        if await self.drained():
            log.info("drained: stopping")
            self._stop_server(previous, sig)
            return
        fields = {"in_flight": self.in_flight, "timeout_s": self.timeout}
        if self.ending_now:
            log.warning("SIGINT while stopping: ending the requests in flight now", extra={"fields": fields})
            ended = await self.cut_off(STOPPED_MESSAGE)
        else:
            log.error("shutdown timeout: stopping with requests in flight", extra={"fields": fields})
            ended = await self.cut_off()
        # Each has ended (answered 503, or left unfinished) and its connection closes: uvicorn
        # stops as after a drain, with nothing to wait for, and runs the lifespan's shutdown.
        self._stop_server(previous, sig)
        if ended:
            return
        log.warning(
            "requests cut off did not end: stopping without the lifespan's shutdown (the last "
            "access log lines may be lost)",
            extra={"fields": {"in_flight": self.in_flight, "grace_s": self.cut_off_grace}},
        )
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

        # An ASGI app under asyncio always runs in a task: the request is counted by it. A scrape
        # is counted for the drain but not in the gauge; in this order (and the reverse at its end)
        # the gauge, read in another thread, never dips below the requests being served.
        task = cast("asyncio.Task[Any]", asyncio.current_task())
        lifecycle.requests.add(task)
        scrape = scope["path"] == METRICS_PATH
        if scrape:
            lifecycle.scrapes += 1
        try:
            await self.app(scope, receive, close_when_draining)
        except asyncio.CancelledError:
            message = lifecycle.cut_off_requests.get(task)
            if message is None:
                raise  # not ours to end (the server's own, say): as it came
            # Cut off (at the shutdown timeout, or told to stop at once): the request ends here,
            # with an answer (uvicorn would log a CancelledError escaping the app as an error,
            # with its traceback).
            task.uncancel()
            if not started:
                await _unavailable(send, scope["path"], message)
            # Else its response had begun and cannot be answered: it stays unfinished, and the
            # server closes the connection (uvicorn says so in one line, without a traceback).
        finally:
            if scrape:
                lifecycle.scrapes -= 1
            lifecycle.requests.discard(task)
            lifecycle.cut_off_requests.pop(task, None)


async def _unavailable(send: Send, path: str, message: str) -> None:
    """503 in the path's error format, to retry elsewhere; the connection closes after it."""
    headers = [(b"retry-after", b"1"), (b"connection", b"close")]
    for part in json_response(503, error_body(path, message), headers):
        await send(part)
