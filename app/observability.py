"""Request ids, one structured log line per request, and Prometheus metrics.

A pure ASGI middleware: it adds little per request and sees every response, errors included.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

try:
    from fastapi.routing import iter_route_contexts  # FastAPI 0.165: included routers kept whole
except ImportError:  # an earlier FastAPI copies an included router's routes into the app's

    def iter_route_contexts(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:  # type: ignore[misc]
        return iter(routes)


if TYPE_CHECKING:  # a type only: at run time this module needs no onnxruntime (``python -m app`` logs first)
    from app.core.registry import ModelStatus

access_log = logging.getLogger("shape_detector.access")
REQUEST_ID = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# The methods a metric's ``method`` label names; any other (uvicorn parses PROPFIND, MKCOL,
# PURGE, ...) is "other", so a client cannot add series (each with its histogram buckets) at will.
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
MALFORMED_ROUTE = "malformed"  # the route label of a request the HTTP parser refused (app/server.py)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "shape_detector_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "shape_detector_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.signals = Counter("shape_detector_signals", "Signals processed by model.", ["model"], registry=r)
        self.samples = Counter("shape_detector_samples", "Samples processed by model.", ["model"], registry=r)
        self.inference = Histogram(
            "shape_detector_inference_seconds",
            "Time to decode, run and encode one detection request.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Set to read the server's count at each scrape (Runner): nothing on the request path.
        self.inflight_bytes = Gauge(
            "shape_detector_inflight_bytes",
            "Bytes of request bodies held: requests read, decoded, queued or scored.",
            registry=r,
        )


class ModelCollector:
    """The models' state, read at each scrape (nothing on the request path): whether each
    serves, the version it serves, its queue, and its batcher's counts: batches run, the
    requests they held (their ratio is the mean batch size), requests dropped unrun and
    requests stopped while they ran once their caller gave up (deadline, client gone). Read
    from the registry, never stored: a reloaded model shows its new version only, and its
    counts start again from zero (a new batcher)."""

    def __init__(self, statuses: Callable[[], list[ModelStatus]]) -> None:
        self._statuses = statuses  # the registry's, read at each scrape

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "shape_detector_model_ready", "1 if the model serves, else 0.", labels=["model"]
        )
        info = GaugeMetricFamily(
            "shape_detector_model_info", "Models loaded (1) with their version.", labels=["model", "version"]
        )
        depth = GaugeMetricFamily(
            "shape_detector_queue_depth", "Requests waiting for the model's batcher.", labels=["model"]
        )
        counts = {
            "batches": CounterMetricFamily(
                "shape_detector_batches", "onnxruntime batches run, by model.", labels=["model"]
            ),
            "requests": CounterMetricFamily(
                "shape_detector_batched_requests",
                "Requests scored in those batches, by model (over batches: the mean batch size).",
                labels=["model"],
            ),
            "dropped": CounterMetricFamily(
                "shape_detector_dropped_requests",
                "Requests dropped unrun: their deadline passed or their client left while they "
                "waited, by model.",
                labels=["model"],
            ),
            "abandoned": CounterMetricFamily(
                "shape_detector_abandoned_requests",
                "Requests stopped while they ran, their remaining onnxruntime calls skipped: their "
                "deadline passed or their client left, by model.",
                labels=["model"],
            ),
        }
        for status in self._statuses():
            name, model, batcher = status.name, status.model, status.batcher
            ready.add_metric([name], 1 if status.state == "ready" else 0)
            if model is not None:
                info.add_metric([name, model.version], 1)
            if batcher is not None:
                depth.add_metric([name], batcher.queued)
                for field, family in counts.items():
                    family.add_metric([name], getattr(batcher.stats, field))
        yield from (ready, info, depth, *counts.values())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _stamp: tuple[int, str] = (-1, "")  # (second, its text), replaced as one object

    def _time(self, created: float) -> str:
        """``2026-11-24T21:00:00.123Z`` (UTC); the part up to the second is formatted once a second."""
        second = int(created)
        done, text = self._stamp
        if second != done:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamp = (second, text)
        return f"{text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        return self.line(
            record.created,
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            fields if isinstance(fields, dict) else None,
            self.formatException(record.exc_info) if record.exc_info else None,
        )

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any] | None = None,
        exc: str | None = None,
    ) -> str:
        """The line of a record with these values (``format`` of a record, or of none at all)."""
        doc: dict[str, Any] = {
            "time": self._time(created),
            "level": level,
            "logger": logger,
            "message": message,
        }
        if fields:
            doc.update(fields)
        if exc:
            doc["exc"] = exc
        # orjson: 1 µs where the json module took 4 (anything it cannot encode becomes its str).
        try:
            return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:  # an integer beyond 64 bits, say: the json module has no limit
            return json.dumps(doc, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("shape_detector")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.Formatter.converter = time.gmtime


def server_log_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the server around the app (``python -m app`` hands it to
    uvicorn, serving with ``app.server.HeadWithBodyProtocol``): uvicorn's own lines (start, stop,
    errors outside the app) and any other library's warnings are JSON lines on stderr too, as
    the service's own are. A request the HTTP parser refuses gets one line, the protocol's
    access line: uvicorn's warning about it is dropped (``app.server.ParserRefusalAnswered``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        # By name: app.server imports this module.
        "filters": {"parser_refusal_answered": {"()": "app.server.ParserRefusalAnswered"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper(), "filters": ["parser_refusal_answered"]},
            "uvicorn.access": {"level": level.upper()},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


def _direct_handler(logger: logging.Logger) -> tuple[logging.StreamHandler[Any], JsonFormatter] | None:
    """The one handler of ``logger``'s INFO records, with its formatter, when writing a line to its
    stream directly gives what the logging module would (the set-up of ``configure_logging``):
    a plain ``StreamHandler`` formatting with ``JsonFormatter``, and no filter anywhere."""
    if logger.disabled or logger.filters:
        return None
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:  # as Logger.callHandlers collects them
        handlers.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    if len(handlers) != 1:
        return None
    (handler,) = handlers
    formatter = handler.formatter
    if (
        type(handler) is not logging.StreamHandler
        or handler.filters
        or handler.level > logging.INFO
        or not isinstance(formatter, JsonFormatter)
    ):
        return None
    return handler, formatter


IDLE_INTERVALS = 20  # the access log's writer sleeps after this many intervals with no line


class AccessLog:
    """One line per request on the ``shape_detector.access`` logger, written by a thread of its own.

    The event loop only notes each request's fields and end time; a writer thread makes and
    writes the lines every ``interval`` seconds, in the order the requests ended, each record
    with its request's end time. ``close`` (at shutdown) writes what is left and stops it.
    After ``IDLE_INTERVALS`` intervals with nothing to write the thread sleeps until the next
    line: an idle service does not wake every ``interval``.

    Made on the event loop, even together at the end of its iteration, a line cost a request
    at concurrency 1 about 50 µs of latency (1×1024 JSON over HTTP, median p50 of 5 rounds side
    by side: 0.90 ms against 0.85 ms with this thread); at concurrency 32 the two are even. The
    thread makes its lines while the loop waits for inference, and many at a time.

    With the service's logging set-up (``configure_logging``: one plain ``StreamHandler`` with
    ``JsonFormatter``, no filter) the thread formats the lines itself and writes them in one
    go, as the handler would one by one; any other set-up (another handler, a filter) gets
    log records as usual. A record per line cost 1×1024 JSON at concurrency 32 with one process
    about a tenth of its requests/s (3039–3212 against 3426–3515 requests/s, medians of 5–6
    rounds side by side): the interpreter lock the thread holds is the event loop's.
    """

    def __init__(self, logger: logging.Logger = access_log, interval: float = 0.05) -> None:
        self.logger = logger
        self.interval = interval
        self._pending: deque[tuple[float, dict[str, Any]]] = deque()
        self._lock = threading.RLock()  # one flush at a time: lines stay in order
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._wake = threading.Event()  # set by ``add`` when the writer sleeps
        self._asleep = False

    def add(self, fields: dict[str, Any]) -> None:
        """Log ``fields`` (one request's) within ``interval`` seconds."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self._pending.append((time.time(), fields))
        if self._asleep:  # the line is queued before the flag is read: the writer cannot miss it
            self._asleep = False
            self._wake.set()
        if self._writer is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._writer is None and not self._stop.is_set():
                self._writer = threading.Thread(target=self._run, name="access-log", daemon=True)
                self._writer.start()

    def _run(self) -> None:
        idle = 0
        while not self._stop.wait(self.interval):
            if self._pending:
                idle = 0
                self.flush()
                continue
            idle += 1
            if idle >= IDLE_INTERVALS:  # sleep until ``add`` or ``close`` wakes it
                idle = 0
                self._wake.clear()
                self._asleep = True  # set before the queue is looked at, as ``add`` does the reverse
                if not self._pending:
                    self._wake.wait()
                self._asleep = False

    def flush(self) -> None:
        """Hand every pending line to the logger, in the order the requests ended."""
        with self._lock:
            pending = self._pending
            if not pending:
                return
            direct = _direct_handler(self.logger)
            if direct is not None:
                handler, formatter = direct
                name = self.logger.name
                lines = []
                while pending:
                    ended, fields = pending.popleft()
                    lines.append(formatter.line(ended, "info", name, "request", fields) + handler.terminator)
                self._write(handler, "".join(lines))
                return
            while pending:
                ended, fields = pending.popleft()
                record = self.logger.makeRecord(
                    self.logger.name, logging.INFO, __file__, 0, "request", (), None, extra={"fields": fields}
                )
                record.relativeCreated += (ended - record.created) * 1000
                record.created, record.msecs = ended, int((ended - int(ended)) * 1000) + 0.0
                self.logger.handle(record)

    @staticmethod
    def _write(handler: logging.StreamHandler[Any], text: str) -> None:
        """``text`` (whole lines) to the handler's stream at once, as its ``emit`` writes one."""
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": "access log lines", "levelno": logging.INFO}))
        finally:
            handler.release()

    def close(self) -> None:
        """Stop the writer thread and write what is left. A later ``add`` (the app started
        again) starts a new writer."""
        self._stop.set()
        self._wake.set()
        writer = self._writer
        if writer is not None:
            writer.join()
        with self._lock:
            self.flush()
            self._writer = None
            self._stop.clear()
            self._wake.clear()
            self._asleep = False


class ObservabilityMiddleware:
    """``owner``, the application, names the templates of its plain Starlette routes and mounts
    (``/openapi.json``, ``/static``) in the metrics: FastAPI puts only its own routes in a
    request's scope."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, access: AccessLog | None = None, owner: Any = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access or AccessLog()
        self.owner = owner
        self._templates: dict[Any, str] | None = None  # endpoint -> template, made at first use
        self._routes: list[Any] | None = None  # every route, to match a path with, made at first use
        # The labelled children, looked up once per (method, route, status): ``labels()`` takes a
        # lock and builds its key on every call.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def _record(self, method: str, template: str, status: int, duration: float) -> None:
        counter = self._counters.get((method, template, status))
        if counter is None:
            counter = self._counters.setdefault(
                (method, template, status), self.metrics.requests.labels(method, template, str(status))
            )
        histogram = self._histograms.get((method, template))
        if histogram is None:
            histogram = self._histograms.setdefault(
                (method, template), self.metrics.latency.labels(method, template)
            )
        counter.inc()
        histogram.observe(duration)

    def _template(self, scope: Scope) -> str:
        """The matched route's template; ``unmatched`` for a path no route takes."""
        route = scope.get("route")
        template = getattr(route, "path", None)
        if template:
            return str(template)
        if self.owner is None:
            return "unmatched"
        endpoint = scope.get("endpoint")  # set by a plain Starlette route or mount that matched
        if endpoint is None:
            return self._template_of_path(scope)
        if self._templates is None:
            self._templates = {
                (r.endpoint if isinstance(r, Route) else r.app): r.path
                for r in self.owner.routes
                if type(r) in (Route, Mount)  # FastAPI's own routes name themselves in the scope
            }
        return self._templates.get(endpoint, "unmatched")

    def _template_of_path(self, scope: Scope) -> str:
        """The template of the route that takes the request's path, for a request answered before
        the router saw it (401 without a key, 503 while draining, a refused CORS preflight): its
        path is a route's, not one no route takes. One that takes it by another method counts."""
        if self._routes is None:  # every route, those of included routers too
            self._routes = list(iter_route_contexts(self.owner.routes))
        partial = None
        for r in self._routes:
            match, _ = r.matches(scope)
            if match is Match.FULL:
                return str(r.path)
            if match is Match.PARTIAL and partial is None:
                partial = str(r.path)
        return partial or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                candidate = value.decode("latin1")
                if _VALID_ID.match(candidate):
                    request_id = candidate
                break
        # 32 hex digits, as uuid4().hex, from the random module's generator (seeded from the OS,
        # again in a forked child): os.urandom is a system call that lets the inference thread
        # take the interpreter lock from the event loop (see pipeline.float32_holding_gil).
        request_id = request_id or f"{random.getrandbits(128):032x}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            method = scope["method"]
            template = self._template(scope)
            self._record(method if method in METRIC_METHODS else "other", template, status, duration)
            self.access.add(
                {
                    "request_id": request_id,
                    "method": method,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration * 1000, 3),
                    "signals": state.get("signals", 0),
                    "samples": state.get("samples", 0),
                }
            )
