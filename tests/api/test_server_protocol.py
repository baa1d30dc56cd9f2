"""``HeadWithBodyProtocol``: uvicorn's protocol with each response's head written with its body.

Driven as uvicorn drives it (a parsed request in, writes out), with a transport that records its
writes, and ASGI apps that answer in every way the protocol must handle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app import server
from app.observability import Metrics
from app.security import JsonCORSMiddleware, RefusalCors, cors_options
from app.server import IMPORT_PATH, HeadWithBodyProtocol, HeldHead, ParserRefusalAnswered, fits

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


class Transport(asyncio.Transport):
    """Records what is written; closing is recorded in order with the writes."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[bytes | str] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.events.append(bytes(data))

    def close(self) -> None:
        self.closed = True
        self.events.append("close")

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connect(
    app: App,
    protocol: type[HttpToolsProtocol | H11Protocol] = HeadWithBodyProtocol,
    app_state: dict[str, Any] | None = None,
) -> tuple[Any, Transport]:
    """A protocol as uvicorn makes one per connection, on a recording transport; ``app_state``:
    the state the app's lifespan shares with requests."""
    config = Config(app=app, lifespan="off", log_config=None)  # the process's logging untouched
    config.load()
    transport = Transport()
    proto = protocol(config=config, server_state=ServerState(), app_state=app_state or {})
    proto.connection_made(transport)
    return proto, transport


async def settle(proto: Any) -> None:
    """Let the request's task, and what it awaits, run; then cancel the keep-alive timer."""
    for _ in range(50):
        await asyncio.sleep(0)
    if proto.timeout_keep_alive_task is not None:
        proto.timeout_keep_alive_task.cancel()


async def serve(
    app: App, request: bytes, protocol: type[HttpToolsProtocol] = HeadWithBodyProtocol
) -> Transport:
    proto, transport = connect(app, protocol)
    proto.data_received(request)
    await settle(proto)
    return transport


def answer(*bodies: bytes) -> App:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        length = sum(len(b) for b in bodies)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(length).encode())],
            }
        )
        for i, body in enumerate(bodies):
            await send({"type": "http.response.body", "body": body, "more_body": i < len(bodies) - 1})

    return app


def test_head_and_body_go_out_in_one_write() -> None:
    transport = asyncio.run(serve(answer(b'{"ok":true}'), GET))
    assert len(transport.events) == 1
    head, body = transport.events[0].split(b"\r\n\r\n", 1)  # type: ignore[union-attr]
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 11" in head
    assert body == b'{"ok":true}'


def test_the_same_bytes_as_uvicorns_own_protocol() -> None:
    ours = asyncio.run(serve(answer(b"abc", b"def"), GET))
    theirs = asyncio.run(serve(answer(b"abc", b"def"), GET, HttpToolsProtocol))
    assert len(theirs.events) == 3 and len(ours.events) == 2  # the head rides with "abc"
    strip = [e for e in theirs.events if isinstance(e, bytes)]
    assert b"".join(ours.events) == b"".join(strip)  # type: ignore[arg-type]
    assert ours.events[1] == b"def"  # later chunks are written as they come


def test_a_response_to_head_is_written_at_once() -> None:
    request = b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n"
    transport = asyncio.run(serve(answer(b"abc"), request))
    assert len(transport.events) == 1 and transport.events[0].startswith(b"HTTP/1.1 200 OK")  # type: ignore[union-attr]
    assert transport.events[0].endswith(b"\r\n\r\n")  # type: ignore[union-attr]


def test_100_continue_is_not_held() -> None:
    seen: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()  # asks for the body: the protocol sends 100 Continue first
        seen.append(message["body"])
        await answer(b"ok")(scope, receive, send)

    request = b"POST / HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"

    async def run() -> Transport:
        proto, transport = connect(app)
        proto.data_received(request)
        await settle(proto)
        assert transport.events == [b"HTTP/1.1 100 Continue\r\n\r\n"]  # before the body came
        proto.data_received(b"hi")
        await settle(proto)
        return transport

    transport = asyncio.run(run())
    assert seen == [b"hi"] and len(transport.events) == 2
    assert transport.events[1].startswith(b"HTTP/1.1 200 OK") and transport.events[1].endswith(b"ok")  # type: ignore[union-attr]


@pytest.mark.parametrize("ending", ["raises", "returns"])
def test_a_started_response_left_unfinished_writes_its_head_then_closes(ending: str) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
        if ending == "raises":
            raise RuntimeError("the app failed after starting its response")

    transport = asyncio.run(serve(app, GET))
    assert [type(e) for e in transport.events] == [bytes, str] and transport.events[1] == "close"
    assert transport.events[0].startswith(b"HTTP/1.1 200 OK") and transport.events[0].endswith(b"\r\n\r\n")  # type: ignore[union-attr]


def test_pipelined_requests_each_get_their_own_single_write() -> None:
    transport = asyncio.run(serve(answer(b"abc"), GET + GET))
    assert len(transport.events) == 2
    assert all(e.startswith(b"HTTP/1.1 200 OK") and e.endswith(b"abc") for e in transport.events)  # type: ignore[union-attr]


def test_a_client_gone_with_requests_pipelined_is_gone_for_the_one_running() -> None:
    """The request running hears that its client left (a large one is then dropped, 499) and
    writes nothing to the closed connection. uvicorn told only the newest request, one waiting
    behind it: the running one answered into the closed transport (under uvloop a RuntimeError,
    logged as an unhandled error) and a large one ran to its end."""
    heard: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # the (empty) body
        try:
            heard.append((await asyncio.wait_for(receive(), 1.0))["type"])
        except TimeoutError:
            heard.append("nothing")
        await answer(b"late")(scope, receive, send)

    async def run() -> Transport:
        proto, transport = connect(app)
        proto.data_received(GET + GET)  # the second waits behind the first
        await settle(proto)
        proto.connection_lost(None)
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.02)
        await settle(proto)
        return transport

    transport = asyncio.run(run())
    assert heard == ["http.disconnect"]
    assert transport.events == ["close"]  # nothing written, before or after


def test_uvicorn_finds_the_protocol_by_its_import_path() -> None:
    config = Config(app=answer(b""), http=IMPORT_PATH, log_config=None)
    config.load()
    assert config.http_protocol_class is HeadWithBodyProtocol


def test_the_cycle_of_this_uvicorn_fits() -> None:
    seen: list[Any] = []

    class Recording(HeadWithBodyProtocol):
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            seen.append(self.cycle)

    asyncio.run(serve(answer(b"abc"), GET, Recording))
    assert len(seen) == 1 and fits(seen[0]) and isinstance(seen[0].transport, HeldHead)


def test_a_cycle_without_what_the_held_head_uses_does_not_fit() -> None:
    class Cycle:
        def __init__(self, **attributes: Any) -> None:
            self.__dict__.update(attributes)

    assert fits(Cycle(transport=None, response_started=False, scope={"method": "GET"}))
    assert not fits(Cycle(transport=None, scope={"method": "GET"}))
    assert not fits(Cycle(transport=None, response_started=False, scope=None))


def test_with_a_uvicorn_whose_cycle_differs_responses_are_written_as_uvicorn_writes_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(HeadWithBodyProtocol, "holds_heads", None)
    monkeypatch.setattr(server, "fits", lambda cycle: False)
    with caplog.at_level(logging.WARNING, logger="shape_detector"):
        ours = asyncio.run(serve(answer(b"abc"), GET + GET))
    theirs = asyncio.run(serve(answer(b"abc"), GET + GET, HttpToolsProtocol))
    assert len(ours.events) == 4 and ours.events == theirs.events  # head and body apart, twice
    warnings = [r for r in caplog.records if "request cycle lacks" in r.getMessage()]
    assert len(warnings) == 1  # once, not per request


@pytest.mark.parametrize(
    ("request_bytes", "reason", "key", "path"),
    [
        (b"FOO / HTTP/1.1\r\nHost: test\r\n\r\n", "Invalid method encountered", "detail", None),
        (
            b"POST /v2/models/bump/infer HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            "Duplicate Content-Length",
            "error",  # the Open Inference Protocol's error format, read from the request line
            "/v2/models/bump/infer",
        ),
        (b"GET /healthz HTTP/1.1\r\nHo st: test\r\n\r\n", "Invalid header token", "detail", "/healthz"),
    ],
)
def test_a_request_the_parser_refuses_gets_a_json_400_naming_why(
    request_bytes: bytes, reason: str, key: str, path: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    async def never(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("the app must not see a malformed request")

    metrics = Metrics()

    async def refused() -> Transport:
        proto, transport = connect(never, app_state={"metrics": metrics})
        proto.data_received(request_bytes)
        await settle(proto)
        return transport

    with caplog.at_level(logging.INFO, logger="shape_detector.access"):
        transport = asyncio.run(refused())
    assert transport.events[-1] == "close" and len(transport.events) == 2  # one write, then closed
    response = transport.events[0]
    assert isinstance(response, bytes)
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 400 Bad Request"
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"connection"] == b"close"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert orjson.loads(body) == {
        key: f"malformed HTTP request: {reason}; send a well-formed HTTP/1.1 request"
    }
    counted = metrics.registry.get_sample_value(
        "shape_detector_requests_total", {"method": "other", "route": "malformed", "status": "400"}
    )
    assert counted == 1
    (record,) = [r for r in caplog.records if r.name == "shape_detector.access"]
    assert record.fields == {  # type: ignore[attr-defined]
        "method": None,  # refused before the headers' end: the method is not known yet
        "path": path,
        "status": 400,
        "error": reason,
        "client": "127.0.0.1",
    }


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (b"http://[", "invalid url b'http://['"),
        (b"http://a:99999999/x", "invalid url b'http://a:99999999/x'"),
    ],
)
def test_a_url_refused_once_the_headers_are_in_is_named(target: bytes, reason: str) -> None:
    """httptools parses the URL from uvicorn's callback at the headers' end, and reports its
    refusal as "User callback error": the answer names the URL's own error instead."""

    async def never(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("the app must not see a malformed request")

    metrics = Metrics()

    async def refused() -> Transport:
        proto, transport = connect(never, app_state={"metrics": metrics})
        proto.data_received(b"GET " + target + b" HTTP/1.1\r\nHost: test\r\n\r\n")
        await settle(proto)
        return transport

    transport = asyncio.run(refused())
    response, closed = transport.events
    assert isinstance(response, bytes) and closed == "close"
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert orjson.loads(body) == {
        "detail": f"malformed HTTP request: {reason}; send a well-formed HTTP/1.1 request"
    }
    counted = metrics.registry.get_sample_value(
        "shape_detector_requests_total", {"method": "GET", "route": "malformed", "status": "400"}
    )
    assert counted == 1


@pytest.mark.parametrize(
    "refused",
    [
        b"GARBAGE / HTTP/1.1\r\n\r\n",  # its request line
        b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # its body
    ],
)
def test_pipelined_requests_before_a_refused_one_are_answered_first(refused: bytes) -> None:
    """A client reads answers in the order of its requests: the refusal comes after the answers
    to the requests before it (it was written at once, read as the first request's answer, and
    that answer lost), then the connection closes. The refused request never reaches the app."""
    release = asyncio.Event()
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["method"])
        await release.wait()
        await answer(b"abc")(scope, receive, send)

    async def run() -> Transport:
        proto, transport = connect(app)
        proto.data_received(GET + GET + refused)
        await settle(proto)
        proto.data_received(GET)  # after the refused request: not read
        release.set()
        await settle(proto)
        return transport

    transport = asyncio.run(run())
    assert seen == ["GET", "GET"]
    *answers, refusal, closed = transport.events
    assert [a[:15] for a in answers] == [b"HTTP/1.1 200 OK"] * 2  # type: ignore[index]
    assert refusal.startswith(b"HTTP/1.1 400 Bad Request") and closed == "close"  # type: ignore[union-attr]


def pieces(data: bytes, size: int = 4096) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def body_reader(seen: list[int]) -> App:
    """Reads the whole body, notes its length, answers 200."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        length, more = 0, True
        while more:
            message = await receive()
            length += len(message.get("body", b""))
            more = message.get("more_body", False)
        seen.append(length)
        await answer(b"ok")(scope, receive, send)

    return app


@pytest.mark.parametrize(
    "request_bytes",
    [
        # One header that never ends, arriving in pieces: refused once the limit has arrived.
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Long: " + b"a" * 1_000_000,
        # Many short headers, all in (the head complete, its end in the last piece).
        b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"X-A: b\r\n" * 10_000 + b"\r\n",
    ],
    ids=["endless header", "many headers"],
)
@pytest.mark.parametrize("whole", [False, True], ids=["in pieces", "in one piece"])
def test_a_head_beyond_the_limit_is_refused_431_at_once(
    request_bytes: bytes, whole: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn's httptools protocol reads a head of any size, and httptools copies a header's
    pieces together as they arrive: one endless header held the event loop for seconds and grew
    the memory without bound. Beyond MAX_HEAD_BYTES the request is refused, 431, and the
    connection closed; nothing after the limit is read."""

    async def never(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("the app must not see a request whose head is too large")

    metrics = Metrics()

    async def refused() -> tuple[Transport, int]:
        proto, transport = connect(never, app_state={"metrics": metrics})
        sent = 0
        for piece in [request_bytes] if whole else pieces(request_bytes):
            if transport.closed:
                break
            proto.data_received(piece)
            sent += len(piece)
        await settle(proto)
        return transport, sent

    with caplog.at_level(logging.INFO, logger="shape_detector.access"):
        transport, sent = asyncio.run(refused())
    response, closed = transport.events
    assert closed == "close" and isinstance(response, bytes)
    if not whole and request_bytes.endswith(b"a"):  # refused before the header's end
        assert server.MAX_HEAD_BYTES < sent <= server.MAX_HEAD_BYTES + 4096
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close\r\n" in head and b"x-content-type-options: nosniff\r\n" in head
    assert orjson.loads(body) == {
        "detail": "the request line and headers are larger than 65536 bytes, the most this server "
        "reads: send fewer or shorter headers, or a shorter URL"
    }
    counted = metrics.registry.get_sample_value(  # refused before the method is taken from the head
        "shape_detector_requests_total", {"method": "other", "route": "malformed", "status": "431"}
    )
    assert counted == 1
    (record,) = [r for r in caplog.records if r.name == "shape_detector.access"]
    assert record.fields["status"] == 431 and record.fields["path"] == "/healthz"  # type: ignore[attr-defined]


PAGE = "http://page.example"
REFUSED_WITH_ORIGIN = {
    "400 duplicate Content-Length": (
        400,
        b"POST /v1/detect HTTP/1.1\r\nHost: test\r\nOrigin: {origin}\r\n"
        b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    ),
    "400 bad header": (400, b"GET /healthz HTTP/1.1\r\nOrigin: {origin}\r\nHost: test\r\nHo st: x\r\n\r\n"),
    "431 endless header": (431, b"GET /healthz HTTP/1.1\r\nOrigin: {origin}\r\nX-Long: " + b"a" * 100_000),
}


def refused_head(request: bytes, app_state: dict[str, Any]) -> dict[bytes, bytes]:
    """The headers of the server's own answer to ``request``, which its parser refuses."""

    async def never(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("the app must not see a request the parser refuses")

    async def refused() -> Transport:
        proto, transport = connect(never, app_state=app_state)
        proto.data_received(request)
        await settle(proto)
        return transport

    response = asyncio.run(refused()).events[0]
    assert isinstance(response, bytes)
    lines = response.partition(b"\r\n\r\n")[0].split(b"\r\n")
    return dict(line.split(b": ", 1) for line in lines[1:])


@pytest.mark.parametrize(
    ("status", "request_bytes"), REFUSED_WITH_ORIGIN.values(), ids=REFUSED_WITH_ORIGIN.keys()
)
def test_a_refusal_carries_the_cors_headers_of_an_allowed_origin(status: int, request_bytes: bytes) -> None:
    """A request the parser refuses, from a page of an allowed origin, gets the CORS headers the
    app gives its own answers: the page reads the error instead of an opaque network error. Not
    for another origin, nor with CORS off; the Origin counts once the parser has read it."""
    state = {"refusal_cors": RefusalCors([PAGE])}
    allowed = refused_head(request_bytes.replace(b"{origin}", PAGE.encode()), state)
    assert allowed[b"access-control-allow-origin"] == PAGE.encode()
    assert (
        allowed[b"access-control-expose-headers"]
        == b"X-Request-ID, Retry-After, Inference-Header-Content-Length"
    )
    assert allowed[b"vary"] == b"Origin" and allowed[b"connection"] == b"close"
    other = refused_head(request_bytes.replace(b"{origin}", b"http://elsewhere.example"), state)
    assert b"access-control-allow-origin" not in other and other[b"vary"] == b"Origin"
    off = refused_head(request_bytes.replace(b"{origin}", PAGE.encode()), {})
    assert not any(name.startswith(b"access-control-") or name == b"vary" for name in off)
    assert {h[b"x-content-type-options"] for h in (allowed, other, off)} == {b"nosniff"}


@pytest.mark.parametrize("origins", [[PAGE], ["*"]], ids=["list", "wildcard"])
@pytest.mark.parametrize("origin", [PAGE, "http://elsewhere.example", None])
def test_refusal_cors_gives_what_the_apps_cors_layer_gives(origins: list[str], origin: str | None) -> None:
    """The CORS headers of the app's own answers (its CORS layer, as create_app adds it), for the
    same allow-list and Origin."""

    async def answer_404(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    request = {"Origin": origin} if origin else {}
    app = JsonCORSMiddleware(answer_404, **cors_options(origins))
    answered = TestClient(app).get("/nothing", headers=request).headers
    cors = [
        (k.encode(), v.encode())
        for k, v in answered.items()
        if k.startswith("access-control-") or k == "vary"
    ]
    assert cors, answered  # there is something to compare
    received = [(k.lower().encode(), v.encode()) for k, v in request.items()]
    assert RefusalCors(origins).headers(received) == cors


def test_heads_within_the_limit_and_bodies_of_any_size_are_read() -> None:
    """Only a head's bytes count: a head just within the limit, a large body in pieces, and a
    request whose head begins in the same piece as the end of the body before it are served."""
    seen: list[int] = []
    within = b"GET / HTTP/1.1\r\nHost: test\r\nX-Long: " + b"a" * (server.MAX_HEAD_BYTES - 100) + b"\r\n\r\n"
    body = b"x" * 1_000_000
    post = b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body

    async def run() -> Transport:
        proto, transport = connect(body_reader(seen))
        data = within + post + post + GET
        split = len(within) + len(post) + 20  # a piece ends in the second POST's head
        for piece in [*pieces(data[:split], 50_000), *pieces(data[split:], 50_000)]:
            proto.data_received(piece)
            await settle(proto)
        return transport

    transport = asyncio.run(run())
    assert seen == [0, len(body), len(body), 0]
    answers = [e for e in transport.events if isinstance(e, bytes)]
    assert [a[:15] for a in answers] == [b"HTTP/1.1 200 OK"] * 4 and "close" not in transport.events


UPGRADE = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)


def upgrade_offered(body: bytes, chunked: bool) -> bytes:
    """A POST as the JDK's HttpClient sends it on http://: offering h2c, with its body."""
    if chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces(body, 7)) + b"0\r\n\r\n"
    else:
        framing = b"Content-Length: %d\r\n" % len(body)
    return b"POST /v1/detect HTTP/1.1\r\nHost: test\r\n" + UPGRADE + framing + b"\r\n" + body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("split", [None, 0, 5], ids=["together", "body apart", "body cut"])
def test_a_request_offering_an_upgrade_is_served_with_its_body(chunked: bool, split: int | None) -> None:
    """llhttp ends a request that offers an upgrade at its headers: uvicorn, which takes none
    but WebSocket, lost the body (the app read 0 bytes; sent apart, the body was read as a next,
    malformed, request). The upgrade is not taken and the request is served as HTTP/1.1, its
    body and the requests after it included, however the data is cut."""
    bodies: list[bytes] = []

    async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        bodies.append(body)
        await answer(b"ok")(scope, receive, send)

    body = b'{"signals": [[0.5, 0.25, 1.0, 2.0]]}'
    offered = upgrade_offered(body, chunked)
    head_end = offered.index(b"\r\n\r\n") + 4
    cut = len(offered) if split is None else head_end + split
    after = (
        b"GET /healthz HTTP/1.1\r\nHost: test\r\n"
        + UPGRADE
        + b"\r\n"
        + upgrade_offered(body, not chunked)
        + GET
    )

    async def run() -> Transport:
        proto, transport = connect(echo)
        for data in (offered[:cut], offered[cut:] + after):
            proto.data_received(data)
            await settle(proto)
        return transport

    transport = asyncio.run(run())
    assert bodies == [body, b"", body, b""]
    answers = [e for e in transport.events if isinstance(e, bytes)]
    assert [a[:15] for a in answers] == [b"HTTP/1.1 200 OK"] * 4 and "close" not in transport.events


def test_uvicorns_warning_is_dropped_only_for_the_refusals_the_service_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn warns "Invalid HTTP request received." before it asks the protocol to answer a
    request its parser refused. The service's protocol answers it and logs an access line, so
    ``ParserRefusalAnswered`` drops that warning; uvicorn's h11 protocol answers by itself (plain
    text, no access line), so its warning passes."""
    request = b"GET /healthz HTTP/1.1\r\nHo st: test\r\n\r\n"

    async def never(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("the app must not see a malformed request")

    async def refused(protocol: type[HttpToolsProtocol | H11Protocol]) -> None:
        proto, transport = connect(never, protocol)
        proto.data_received(request)
        await settle(proto)
        assert transport.events[0].startswith(b"HTTP/1.1 400 ")  # type: ignore[union-attr]

    passes = {}
    for protocol in (HeadWithBodyProtocol, H11Protocol):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
            asyncio.run(refused(protocol))
        (warning,) = [r for r in caplog.records if r.getMessage() == "Invalid HTTP request received."]
        passes[protocol.__name__] = ParserRefusalAnswered().filter(warning)
    assert passes == {"HeadWithBodyProtocol": False, "H11Protocol": True}
