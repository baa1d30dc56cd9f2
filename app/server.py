"""uvicorn's HTTP/1.1 protocol (httptools), writing each response's head with its body.

uvicorn writes a response's status line and headers to the socket when the app sends
``http.response.start``, and the body in a second write when it sends ``http.response.body``:
two system calls and two TCP segments per response, and the client wakes for the first only to
wait for the second. ``HeadWithBodyProtocol`` holds the head until the first body chunk and
writes both at once: one system call and one segment fewer per response (benchmarks/README.md,
"One write per response", for what that measured). The ASGI specification asks this of a
server: it "must not start sending the response to the client until it has received at least
one Response Body event".
It also answers a request uvicorn's parser refuses (a malformed request line, header, length
or chunk) as the app answers its errors: JSON naming the parser's reason, with the security
headers, the CORS headers when CORS is on (``RefusalCors``: a page of an allowed origin reads
the error), an access-log line and a count in the app's metrics (route ``malformed``): the
app never sees such a request. The warning uvicorn logs before it asks for that answer
("Invalid HTTP request received.") would be a second line for the same request:
``ParserRefusalAnswered`` drops it (``python -m app``'s log configuration applies it).
Pipelined requests keep their order when one is refused: the requests before it are answered
first, then the refusal (uvicorn wrote it at once, where the client reads the answer to its
first request). A client that leaves with pipelined requests waiting is gone for the request
running too (uvicorn tells only the newest one). The request line and headers
of a request may be at most ``MAX_HEAD_BYTES`` (431, as soon as more has arrived).
A request offering an upgrade the server does not take (``Upgrade: h2c``) is served as
HTTP/1.1 with its body, which uvicorn's protocol lost.
Everything else is uvicorn's.

``python -m app`` serves with it; with uvicorn's own command line, ``--http
app.server:HeadWithBodyProtocol`` does the same.
"""

from __future__ import annotations

import asyncio
import http
import logging
import sys
from collections import deque
from typing import Any, cast

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.observability import MALFORMED_ROUTE, METRIC_METHODS, Metrics
from app.security import COMMON_HEADERS, RefusalCors, error_body

IMPORT_PATH = "app.server:HeadWithBodyProtocol"
# The request line and headers of one request, at most: uvicorn's httptools protocol has no
# limit, and httptools joins the pieces of a header as they arrive (each time a copy of all so
# far): one client sending an endless header held the event loop for seconds at a time (200 MB:
# /healthz answered after 49 s) and the server's memory grew with it.
MAX_HEAD_BYTES = 64 * 1024
HEAD_TOO_LARGE = (
    f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes, the most this server "
    "reads: send fewer or shorter headers, or a shorter URL"
)

log = logging.getLogger("shape_detector")
access_log = logging.getLogger("shape_detector.access")


class HeldHead:
    """The transport as one response (uvicorn's ``RequestResponseCycle``) sees it: the first
    write after the response started, its head, is held and written with the next one.

    Written at once: a ``100 Continue`` (sent before the response starts) and the head of a
    response to HEAD (no body write follows it). Closing writes a held head first, as uvicorn
    would have written it: when the app fails, or returns, after starting a response it did not
    finish."""

    __slots__ = ("_cycle", "_head", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._started = False  # the head has gone by (held or written)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif self._started or not self._cycle.response_started or self._cycle.scope["method"] == "HEAD":
            self._transport.write(data)
        else:
            self._started = True
            self._head = bytes(data)

    def flush(self) -> None:
        """Write a held head now."""
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...
        return getattr(self._transport, name)


CYCLE_ATTRIBUTES = ("transport", "response_started", "scope")  # what ``HeldHead`` uses


def fits(cycle: Any) -> bool:
    """uvicorn's request cycle has what ``HeldHead`` uses (a later uvicorn may not)."""
    return all(hasattr(cycle, name) for name in CYCLE_ATTRIBUTES) and isinstance(cycle.scope, dict)


class ParserRefusalAnswered(logging.Filter):
    """Drops the warning uvicorn's httptools protocol logs for a request its parser refused
    (``data_received``: "Invalid HTTP request received."), just before it calls
    ``send_400_response``: ``HeadWithBodyProtocol`` answers that request and logs it itself,
    an access line with the parser's reason. Any other record passes, the same warning from
    uvicorn's h11 protocol (which answers by itself) among them.

    For the ``uvicorn.error`` logger of a server whose protocol is ``HeadWithBodyProtocol``
    (``app.observability.server_log_config``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.module == "httptools_impl"
            and record.funcName == "data_received"
            and record.msg == "Invalid HTTP request received."
        )


class HeadTooLarge(Exception):
    """Raised from the parser's callback for a head found larger than ``MAX_HEAD_BYTES`` once
    complete; ``send_400_response`` answers it 431."""


def head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """The bytes of a parsed head: its URL, each header's name and value with ": " and CRLF."""
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


class _Replayed:
    """The callbacks of the parser that takes over a connection after a request that offered an
    upgrade (``HeadWithBodyProtocol._unsupported_upgrade_warning``): while ``replaying``, the
    request's framing headers fed to it reach nobody (the request has its head already), its body
    and everything after go to the protocol. Only such a connection's parser calls through this;
    every other request's callbacks go to the protocol directly."""

    def __init__(self, protocol: HeadWithBodyProtocol) -> None:
        self.protocol = protocol
        self.replaying = True

    def on_message_begin(self) -> None:
        if not self.replaying:
            self.protocol.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self.replaying:
            self.protocol.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.replaying:
            self.protocol.on_header(name, value)

    def on_headers_complete(self) -> None:
        if not self.replaying:
            self.protocol.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.protocol.on_body(body)

    def on_message_complete(self) -> None:
        self.protocol.on_message_complete()


class HeadWithBodyProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; each request's response is written through a ``HeldHead``.

    The first request's cycle is checked (``fits``): with a uvicorn whose cycle differs, every
    response is written as uvicorn writes it, and a warning says so once."""

    holds_heads: bool | None = None  # None until the first request's cycle is checked

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unanswered: deque[Any] = deque()  # this connection's request cycles, oldest first
        self.refusal: bytes | None = None  # a 400 written once the requests before it are answered
        self.reading_head = False  # a request has begun and its headers are not all in
        self.head_bytes = 0  # bytes of that request's head received before the data being read
        self.feeding = b""  # the data being read
        self.messages = 0  # requests read to their end

    def data_received(self, data: bytes) -> None:
        """The data read; a head still unfinished after it and larger than ``MAX_HEAD_BYTES``
        so far is refused, 431, without waiting for its end."""
        if self.refusal is not None:  # a request was refused: nothing after it is read
            return
        messages, self.feeding = self.messages, data
        super().data_received(data)
        if not self.reading_head or self.refusal is not None or self.transport.is_closing():
            return
        # No request ended in ``data``: every byte of it is this head's. Else the head began
        # somewhere in it: counted from the next data on.
        self.head_bytes = self.head_bytes + len(data) if self.messages == messages else 0
        if self.head_bytes > MAX_HEAD_BYTES:
            self.refuse(431, HEAD_TOO_LARGE, HEAD_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head, self.head_bytes = True, 0

    def _unsupported_upgrade_warning(self) -> None:
        """A request offering an upgrade the server does not take (``Upgrade: h2c``, which every
        JDK HttpClient sends by default on http://, and curl --http2) is served as HTTP/1.1, its
        body included, as RFC 9110 (section 7.8) lets a server do.

        llhttp takes everything after such a request's headers for the new protocol: it ends the
        request there, bodiless, and raises ``HttpParserUpgrade`` with the body's offset in the
        data; uvicorn then warns and drops the rest, so the body was lost (400 "body has 0 bytes
        but its Content-Length is 155", or its bytes read as a next, malformed, request). Here
        the request waits for its body again, and a new parser, given the request's framing
        (its Content-Length or Transfer-Encoding headers, the rest unseen), reads the body into
        it and the requests after it as usual. uvicorn calls this while handling the exception.
        """
        error = sys.exc_info()[1]
        cycle = getattr(self, "cycle", None)
        if not isinstance(error, httptools.HttpParserUpgrade) or not error.args or cycle is None:
            super()._unsupported_upgrade_warning()
            return
        rest = bytes(self.feeding[error.args[0] :])
        framing = [(n, v) for n, v in self.headers if n in (b"content-length", b"transfer-encoding")]
        if framing and not cycle.response_complete:
            cycle.more_body = True  # the app's task has not run: it was made by this same data
            cycle.message_event.clear()
            replay = _Replayed(self)
            self.parser = httptools.HttpRequestParser(replay)
            self.parser.feed_data(
                b"POST / HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in framing) + b"\r\n"
            )
            replay.replaying = False
        else:
            self.parser = httptools.HttpRequestParser(self)
        if rest:
            self.data_received(rest)

    def on_message_complete(self) -> None:
        self.messages += 1
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        self.reading_head = False
        # Measured only when the head can be beyond the limit: nothing on a request's path else.
        if (
            self.head_bytes + len(self.feeding) > MAX_HEAD_BYTES
            and head_size(self.url, self.headers) > MAX_HEAD_BYTES
        ):
            raise HeadTooLarge
        before = getattr(self, "cycle", None)
        super().on_headers_complete()
        cycle = getattr(self, "cycle", None)
        # A new cycle: its task has not run yet (it starts at the loop's next turn at the soonest).
        if cycle is None or cycle is before:
            return
        while self.unanswered and self.unanswered[0].response_complete:
            self.unanswered.popleft()
        self.unanswered.append(cycle)
        holds = HeadWithBodyProtocol.holds_heads
        if holds is None:
            holds = HeadWithBodyProtocol.holds_heads = fits(cycle)
            if not holds:
                log.warning(
                    "uvicorn %s's request cycle lacks one of %s: responses are written as uvicorn "
                    "writes them, head and body apart (app/server.py)",
                    uvicorn.__version__,
                    ", ".join(CYCLE_ATTRIBUTES),
                )
        if holds:
            cycle.transport = cast(asyncio.Transport, HeldHead(self.transport, cycle))

    def connection_lost(self, exc: Exception | None) -> None:
        """Every request of the connection not yet answered learns that its client is gone.

        uvicorn tells only the newest (``self.cycle``): with pipelined requests that is one still
        queued, and the one running went on as if its client were there. Its answer was then
        written to the closed transport, which uvloop refuses (a RuntimeError, logged as an
        unhandled error with its traceback), and a large request was not dropped (499) but run
        to its end."""
        for cycle in self.unanswered:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self.unanswered.clear()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if one waits
        if self.refusal is not None and all(cycle.response_complete for cycle in self.unanswered):
            refusal, self.refusal = self.refusal, b""  # b"": still refused, nothing more is read
            if not self.transport.is_closing():
                self.transport.write(refusal)
                self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """What uvicorn's parser refused, answered as JSON and logged (uvicorn: plain text).

        uvicorn calls this while handling the parser's error, so that error is the one being
        handled: its message (``Duplicate Content-Length``, ``Invalid header token``, ...) is
        the reason given. A URL that httptools parses only once the headers are in (longer than
        64 KiB, an absolute one that is not a URL) is refused from uvicorn's callback, which the
        parser reports as "User callback error": the URL's own error is the reason given then.

        Requests pipelined before the refused one and not yet answered are answered first: the
        refusal waits for them (``on_response_complete``), and nothing after it is read. The
        refused request itself, if its headers had made it a request (its body is what the
        parser refused) waiting behind them, never runs."""
        error = sys.exc_info()[1]
        if isinstance(error, httptools.HttpParserCallbackError):
            if isinstance(error.__context__, HeadTooLarge):
                self.refuse(431, HEAD_TOO_LARGE, HEAD_TOO_LARGE)
                return
            if isinstance(error.__context__, httptools.HttpParserError):
                # "User callback error": uvicorn's callback met the parser's own refusal (a bad URL)
                error = error.__context__
        reason = str(error) if error is not None and str(error) else msg
        self.refuse(400, reason, f"malformed HTTP request: {reason}; send a well-formed HTTP/1.1 request")

    def refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` with ``message`` in the path's error format and close the
        connection, once the requests pipelined before are answered; log ``reason``."""
        scope = getattr(self, "scope", None) or {}
        path = scope.get("path")
        if not isinstance(path, str):  # refused before the headers' end: the target as it came
            target = bytes(getattr(self, "url", b"") or b"").partition(b"?")[0]
            path = target.decode("latin1") if target else None
        payload = orjson.dumps(error_body(path or "/", message))
        # The state the app's lifespan shares with requests (uvicorn keeps it): metrics, CORS.
        state = getattr(self, "app_state", None) or {}
        cors = state.get("refusal_cors")
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode("ascii")]
        for name, value in [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode("ascii")),
            (b"connection", b"close"),
            *(cors.headers(scope.get("headers") or []) if isinstance(cors, RefusalCors) else []),
            *COMMON_HEADERS,
        ]:
            head.extend([name, b": ", value, b"\r\n"])
        response = b"".join([*head, b"\r\n", payload])
        cycle = getattr(self, "cycle", None)
        refused = cycle if cycle is not None and cycle.more_body and not cycle.response_complete else None
        if any(c is not refused and not c.response_complete for c in self.unanswered):
            self.refusal = response
            self.unanswered = deque(c for c in self.unanswered if c is not refused)
            self.pipeline = deque(item for item in self.pipeline if item[0] is not refused)
        else:
            self.transport.write(response)
            self.transport.close()
            self.refusal = b""  # refused: nothing more is read
        metrics = state.get("metrics")
        if isinstance(metrics, Metrics):
            method = scope.get("method")
            label = method if method in METRIC_METHODS else "other"
            metrics.requests.labels(label, MALFORMED_ROUTE, str(status)).inc()
        access_log.info(
            "request",
            extra={
                "fields": {
                    "method": scope.get("method"),
                    "path": path,
                    "status": status,
                    "error": reason,
                    "client": self.client[0] if self.client else None,
                }
            },
        )
