"""Dependencies: lifespan state handed to routes as ``Annotated`` aliases.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
a hop to a worker thread and back for each one on every request (four on /v1/detect).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from app.core.affinity import SameCpu
from app.core.batching import Admission, Finish, Shared
from app.core.card import MAX_MIN_DISTANCE
from app.core.errors import BodyTooLarge, MalformedBody, Overloaded, UnsupportedMediaType
from app.core.inflight import Held, InFlightBytes
from app.core.model import OnnxModel
from app.core.pipeline import Params, decode_request, media_type, respond_many
from app.core.registry import Registry
from app.core.signals import Body, Limits, Signal
from app.core.timeouts import ClientClosedRequest, body_timeout, deadline_exceeded, time_limit
from app.lifecycle import Lifecycle
from app.observability import Metrics
from app.settings import Settings

INLINE_DECODE_BYTES = 64 * 1024  # smaller bodies are decoded on the event loop
# .npy bodies are viewed, not parsed: 1 MiB (256 Ki float32 samples) decodes in about 0.1 ms,
# less than the hop to a decoding thread and back.
INLINE_NPY_BYTES = 1024 * 1024
LONE_AFTER_S = 0.1  # lone: no other connection sent a request for this long, none in flight
SWAP_RETRIES = 3  # a model reloaded between decoding and queueing: decode again for the new one
WATCH_CLIENT_SAMPLES = 1 << 17  # requests this big are dropped from the queue when their client leaves


def one_header(request: Request, name: str) -> str | None:
    """The value of a header a request may carry once (``Content-Type``, ``Inference-Header-
    Content-Length``), or None; given twice it is ambiguous: 400 (RFC 9110, section 5.3)."""
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise MalformedBody(f"the {name} header is given {len(values)} times; send it once")
    return values[0] if values else None


class DecodedRequest(Protocol):
    @property
    def signals(self) -> list[Signal]: ...

    @property
    def samples(self) -> int: ...


D = TypeVar("D", bound=DecodedRequest)


def refused_codings(request: Request, header: str, allowed: tuple[str, ...]) -> str | None:
    """Every value of every ``header`` header, joined, if one of its codings is not ``allowed``
    ("identity" then "gzip" is gzip); None if all are, or there is no such header."""
    if request.headers.get(header) is None:
        return None
    given = ", ".join(request.headers.getlist(header))
    return given if any(coding.strip().lower() not in allowed for coding in given.split(",")) else None


@dataclass
class Runner:
    """Reads a detection body within its size and time limits; inference runs in the model's
    batcher thread, within the request's deadline."""

    executor: ThreadPoolExecutor
    limits: Limits
    max_body_bytes: int
    max_inflight_bytes: int
    metrics: Metrics
    body_timeout: float = 60.0
    request_timeout: float = 60.0
    inline_max_samples: int = 0  # a lone request up to this size runs on the event loop (0: never)
    same_cpu_max_samples: int = 0  # a lone request up to this size is handed off on one CPU (0: never)
    inflight: InFlightBytes = field(init=False)  # bytes of request bodies held at once
    same_cpu: SameCpu = field(init=False)  # on only if same_cpu_max_samples is set (see __post_init__)
    in_flight: int = field(default=0, init=False)  # detection requests between decoding and result
    _last_client: Any = field(default=None, init=False, repr=False)
    _other_client_at: float = field(default=0.0, init=False, repr=False)
    _per_model: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.same_cpu = SameCpu(enabled=self.same_cpu_max_samples > 0)
        self.inflight = InFlightBytes(self.max_inflight_bytes)
        self.metrics.inflight_bytes.set_function(lambda: self.inflight.held)

    async def read_body(self, request: Request, held: Held | None = None) -> bytes | bytearray:
        """The whole body, within MAX_BODY_BYTES and BODY_TIMEOUT_S; uncompressed only.
        ``held`` grows by the body's bytes as they come (``Overloaded`` past MAX_INFLIGHT_BYTES),
        and a Content-Length that could not fit now is refused before any is read. Claimed bytes
        are not held: a client that claims a large body and sends it slowly holds what it sent."""
        self._refuse_codings(request)
        try:
            async with time_limit(self.body_timeout, body_timeout):
                return await self._read_body(request, held)
        except ClientDisconnect:
            raise ClientClosedRequest(
                "the client closed the connection before its body was complete"
            ) from None

    def check_head(self, request: Request) -> None:
        """Refuse a body its headers alone show ``read_body`` would refuse: compressed (415),
        a Content-Length that is no number (400) or over MAX_BODY_BYTES (413). Called before the
        model's readiness is checked and before the request takes a place in the queue: a 503
        ("retry") while the model loads or its queue is full must not stand for a refusal that
        no retry cures."""
        self._refuse_codings(request)
        self._declared_length(request)

    def _refuse_codings(self, request: Request) -> None:
        if (given := refused_codings(request, "content-encoding", ("", "identity"))) is not None:
            raise UnsupportedMediaType(
                f"Content-Encoding {given!r} is not supported: send the body uncompressed"
            )
        # The HTTP parser takes the framing (chunked) off and leaves any other coding on: the body
        # would reach the decoder compressed, refused as malformed for the wrong reason.
        if (given := refused_codings(request, "transfer-encoding", ("", "chunked", "identity"))) is not None:
            raise UnsupportedMediaType(
                f"Transfer-Encoding {given!r} is not supported: send the body uncompressed, "
                "with Content-Length or chunked alone"
            )

    def _declared_length(self, request: Request) -> int | None:
        """The body's Content-Length, at most MAX_BODY_BYTES (else 413); None if chunked."""
        declared = request.headers.get("content-length")
        if declared is None:
            return None
        text = declared.strip(" \t")  # whitespace around a field value is not part of it
        if not (text.isascii() and text.isdigit()):
            raise MalformedBody(f"Content-Length {declared!r} is not a number")
        length = int(text)
        if length > self.max_body_bytes:
            raise BodyTooLarge(self._too_large(request))
        return length

    async def _read_body(self, request: Request, held: Held | None = None) -> bytes | bytearray:
        length = self._declared_length(request)
        if length is not None:
            if held is not None:
                held.fits(length)  # 503 before the body is read if it cannot fit now
            # One buffer that grows with what arrives (a large one by remapping its pages, not
            # copying them): memory follows the bytes received, not the bytes claimed, and so
            # do the bytes held.
            buffer = bytearray()
            async for chunk in request.stream():
                if len(buffer) + len(chunk) > length:
                    raise MalformedBody(f"body is longer than its Content-Length {length}")
                if held is not None:
                    held.grow(len(chunk))
                buffer += chunk
            if len(buffer) != length:
                raise MalformedBody(f"body has {len(buffer)} bytes but its Content-Length is {length}")
            return buffer
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge(self._too_large(request))
            if held is not None:
                held.grow(len(chunk))
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, request: Request) -> str:
        try:
            npy = media_type(request.headers.get("content-type")) == "npy"
        except UnsupportedMediaType:  # /v2, or a type refused once the body is read
            npy = False
        return (
            f"body larger than {self.max_body_bytes} bytes (SHAPE_DETECTOR_MAX_BODY_BYTES): "
            "send fewer signals per request"
            + ("" if npy else " or use the more compact application/x-npy (4 bytes per sample)")
        )

    async def detect(self, request: Request, registry: Registry, name: str, query: Params) -> Response:
        """Read, decode, queue for the model's batcher, and answer with its JSON."""
        content_type = one_header(request, "Content-Type")
        kind = media_type(content_type)  # 415 before reading the body
        registry.status(name)  # 404 before reading the body
        # 413, 415 or 400 before the model's 503 and the queue's: those say retry, no retry cures these
        self.check_head(request)
        registry.get(name)  # 503 before reading the body while the model loads or if it failed

        def decode(model: OnnxModel, body: Body) -> Any:
            return decode_request(model.card, content_type, body, query, self.limits)

        def finish(model: OnnxModel, decoded: Any) -> Finish:
            return Shared(respond_many, model.card, decoded)

        # 503 before reading the body if the queue is full, or its bytes would pass the bound
        with registry.admit(name) as admission, self.inflight.hold() as held:
            payload: bytes = await self.run(
                request,
                registry,
                name,
                self.read_body(request, held),
                decode,
                finish,
                decode_limit=INLINE_NPY_BYTES if kind == "npy" else INLINE_DECODE_BYTES,
                admission=admission,
            )
        return Response(payload, media_type="application/json")

    async def run(
        self,
        request: Request,
        registry: Registry,
        name: str,
        reading: Awaitable[Body],
        decode: Callable[[OnnxModel, Body], D],
        finish: Callable[[OnnxModel, D], Finish],
        *,
        decode_limit: int = INLINE_DECODE_BYTES,
        admission: Admission | None = None,
    ) -> Any:
        """Read the body (``reading``, ``read_body``'s), decode it for the model now serving
        ``name``, queue for its batcher, await the result; from the decoding on within
        REQUEST_TIMEOUT_S (504 after; a request still queued is dropped unrun, one running stops
        before its next onnxruntime call unless it shares its batch).

        A lone request (see ``_lone``) of at most ``inline_max_samples`` samples, while the
        model's workers are all idle, is scored right here on the event loop: the hand-off to a
        worker thread and back (mostly each thread waiting for the interpreter lock) costs about
        as much as its inference.

        ``decode_limit``: bodies up to this size are decoded on the event loop, larger ones in a
        decoding thread. ``admission``: the request's place in the queue while its body is read
        (``Registry.admit``), released here as it is queued.

        The body is held by this call alone (the caller passes its reading, not the bytes), and
        let go of once the request is queued: a JSON text is then no longer needed (its signals
        are copies), so a queue of large JSON requests holds their signals, not also their
        texts. A binary body stays while its signals, views of it, do."""
        body = await reading
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        here = len(body) <= decode_limit
        other_client = self._note_client(request)
        self.in_flight += 1
        try:
            async with time_limit(self.request_timeout, deadline_exceeded):
                for _ in range(SWAP_RETRIES):
                    model = registry.get(name)
                    if here:  # cheaper than a hop to a thread and back
                        decoded = decode(model, body)
                    else:
                        decoded = await loop.run_in_executor(self.executor, decode, model, body)
                    then = finish(model, decoded)
                    if admission is not None:  # its place is taken by the request itself now
                        admission.release()
                    done, result = False, None
                    samples = decoded.samples
                    if samples <= self.inline_max_samples and self._lone(other_client):
                        done, result = registry.run_now(name, model, decoded.signals, then)
                    future = None
                    if not done:  # the batcher settles the waiter: one call into this loop per batch
                        self._place(registry, name, model, samples, other_client)
                        waiter: asyncio.Future[Any] = loop.create_future()
                        future = registry.submit(name, model, decoded.signals, then, waiter)
                    if done or future is not None:
                        break
                else:
                    raise Overloaded(f"model {name!r} is being reloaded; retry shortly")
                del body  # queued: the signals are all it needs now
                request.state.signals = len(decoded.signals)
                request.state.samples = samples
                if future is not None:
                    try:
                        if samples >= WATCH_CLIENT_SAMPLES:
                            result = await self._unless_client_left(request, waiter)
                        else:
                            result = await waiter
                    except (asyncio.CancelledError, ClientClosedRequest):
                        future.give_up()  # the deadline, or the client gone: nothing more runs for it
                        waiter.cancel()  # nobody reads its outcome (asyncio.wait leaves it pending)
                        raise
        finally:
            self.in_flight -= 1
        inference, signals, samples_total = self._model_metrics(name)
        inference.observe(time.perf_counter() - started)
        signals.inc(len(decoded.signals))
        samples_total.inc(samples)
        return result

    @staticmethod
    async def _unless_client_left(request: Request, waiter: asyncio.Future[Any]) -> Any:
        """``waiter``'s result, or ``ClientClosedRequest`` as soon as the client disconnects.

        The body is read, so the next message the server has for the request is its disconnect.
        Watching costs a task (tens of µs): only requests of WATCH_CLIENT_SAMPLES or more,
        whose inference takes far longer, are watched."""
        watch = asyncio.ensure_future(request.receive())
        try:
            await asyncio.wait((waiter, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not watch.done():
                watch.cancel()
        if waiter.done():
            return waiter.result()
        if watch.result()["type"] == "http.disconnect":
            raise ClientClosedRequest("the client closed the connection before its answer")
        return await waiter  # another message (none is expected): wait as usual

    def _place(
        self, registry: Registry, name: str, model: OnnxModel, samples: int, other_client: float
    ) -> None:
        """A lone request up to ``same_cpu_max_samples`` samples: this thread and the model's idle
        inference thread pinned to this thread's CPU (``SameCpu``); any other request: unpinned."""
        if not self.same_cpu.enabled:
            return
        if samples <= self.same_cpu_max_samples and self._lone(other_client):
            if (worker := registry.idle_worker(name, model)) is not None:
                self.same_cpu.pin(worker)
        else:
            self.same_cpu.release()

    def _note_client(self, request: Request) -> float:
        """When a request last came from another connection than this one's (monotonic s)."""
        client = request.scope.get("client")
        if client != self._last_client:
            self._last_client, self._other_client_at = client, time.monotonic()
        return self._other_client_at

    def _lone(self, other_client_at: float) -> bool:
        """Only this request is in flight, and no other connection sent one for LONE_AFTER_S.

        The second condition matters: while requests run on the loop one after the other, no
        two are ever in flight at once, however many clients wait; their connections differ.
        """
        return self.in_flight == 1 and time.monotonic() - other_client_at >= LONE_AFTER_S

    def _model_metrics(self, name: str) -> tuple[Any, Any, Any]:
        """The model's labelled metrics, looked up once (``labels()`` locks and hashes each call)."""
        found = self._per_model.get(name)
        if found is None:
            m = self.metrics
            found = (m.inference.labels(name), m.signals.labels(name), m.samples.labels(name))
            self._per_model[name] = found
        return found


async def get_settings_state(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


async def get_registry(request: Request) -> Registry:
    registry: Registry = request.state.registry
    return registry


async def get_runner(request: Request) -> Runner:
    runner: Runner = request.state.runner
    return runner


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.state.metrics
    return metrics


async def get_lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.state.lifecycle
    return lifecycle


class DetectQuery(BaseModel):
    """The detection routes' query parameters (see ``detect_params``)."""

    model_config = ConfigDict(extra="forbid")  # ``query_name_errors`` names the culprit first

    threshold: float | None = Field(
        None, gt=0, lt=1, allow_inf_nan=False, description="Detection threshold (default: the card's)."
    )
    min_distance: int | None = Field(
        None, ge=1, le=MAX_MIN_DISTANCE, description="Least spacing of two peaks (default: the card's)."
    )
    return_scores: bool | None = Field(None, description="Include per-sample probabilities.")


NO_QUERY = Params()
QUERY_NAMES = frozenset(DetectQuery.model_fields)


def query_name_errors(items: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Unknown and repeated query parameters, as FastAPI reports invalid ones (``loc``
    ``["query", name]``): a misspelt or repeated parameter must not pass silently (a mapping
    would drop the one or keep the last of the other)."""
    allowed = ", ".join(DetectQuery.model_fields)
    values: dict[str, list[str]] = {}
    for name, value in items:
        values.setdefault(name, []).append(value)
    errors: list[dict[str, Any]] = []
    for name, given in values.items():
        if name not in QUERY_NAMES:
            errors.append(
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": f"unknown query parameter {name!r}; the detection routes take {allowed}",
                    "input": given[0] if len(given) == 1 else given,
                }
            )
        elif len(given) > 1:
            errors.append(
                {
                    "type": "value_error",
                    "loc": ("query", name),
                    "msg": f"query parameter {name!r} is given {len(given)} times: give it once",
                    "input": given,
                }
            )
    return errors


async def detect_params(request: Request) -> Params:
    """The query parameters of a detection request, validated as FastAPI validates ``Query``
    parameters (422, ``loc`` ``["query", name]``); an unknown or repeated one is refused too.

    The detection routes take no FastAPI dependencies: solving them (four state getters and
    three query parameters) cost about 0.15 ms of the event loop per request, more than
    everything else FastAPI does for the route. A request without a query string, the usual
    one, costs nothing here.
    """
    if not request.scope.get("query_string"):
        return NO_QUERY
    items = request.query_params.multi_items()
    given = dict(items)
    if len(given) != len(items) or not given.keys() <= QUERY_NAMES:
        raise RequestValidationError(query_name_errors(items))
    try:
        query = DetectQuery.model_validate(given)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None
    return Params(query.threshold, query.min_distance, query.return_scores)


def query_parameters_doc() -> list[dict[str, Any]]:
    """``DetectQuery`` as OpenAPI parameters, as FastAPI would document ``Query`` parameters."""
    schema = DetectQuery.model_json_schema()
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {k: v for k, v in prop.items() if k != "default"},
            "description": prop["description"],
        }
        for name, prop in schema["properties"].items()
    ]


@dataclass(frozen=True, slots=True)
class DetectCall:
    """Everything a detection route needs: lifespan state and the request's query options."""

    runner: Runner
    registry: Registry
    default_model: str
    query: Params

    async def __call__(self, request: Request, name: str | None = None) -> Response:
        """Detect with the model ``name`` (default: the service's default model)."""
        return await self.runner.detect(request, self.registry, name or self.default_model, self.query)


async def detect_call(request: Request) -> DetectCall:
    """One dependency for the detection routes: FastAPI solves each dependency of a route on
    every request (about 8 µs apiece), and these routes are the hot path."""
    settings = await get_settings_state(request)
    query = await detect_params(request)
    return DetectCall(await get_runner(request), await get_registry(request), settings.DEFAULT_MODEL, query)


SettingsDep = Annotated[Settings, Depends(get_settings_state)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
RunnerDep = Annotated[Runner, Depends(get_runner)]
DetectDep = Annotated[DetectCall, Depends(detect_call)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
