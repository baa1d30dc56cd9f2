"""Reading a request body: memory follows the bytes received, and the headers that frame it."""

import asyncio
import tracemalloc
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from app.api.deps import Runner
from app.core.errors import MalformedBody, UnsupportedMediaType
from app.core.timeouts import ClientClosedRequest


def request(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> Request:
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/v1/detect", "headers": headers, "query_string": b""}
    return Request(scope, receive)


def read(req: Request, max_body_bytes: int = 256 << 20) -> bytes | bytearray:
    runner = SimpleNamespace(max_body_bytes=max_body_bytes, _too_large=lambda request: "too large")
    runner._declared_length = lambda request: Runner._declared_length(runner, request)  # type: ignore[arg-type]
    return asyncio.run(Runner._read_body(runner, req))  # type: ignore[arg-type]


def test_a_claimed_length_is_not_allocated_before_it_arrives() -> None:
    """A client that claims 100 MB and sends 6 bytes held 100 MB (zero-filled on the event
    loop) until the body timeout; now the buffer holds what arrived."""
    tracemalloc.start()
    try:
        with pytest.raises(MalformedBody, match="body has 6 bytes but its Content-Length is 100000000"):
            read(request([(b"content-length", b"100000000")], [b"abcdef"]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_body_in_chunks_is_read_whole() -> None:
    chunks = [bytes([i]) * 70_000 for i in range(5)]
    body = read(request([(b"content-length", b"350000")], chunks))
    assert bytes(body) == b"".join(chunks)
    with pytest.raises(MalformedBody, match="longer than its Content-Length 349999"):
        read(request([(b"content-length", b"349999")], chunks))


def test_whitespace_around_content_length_is_not_part_of_it() -> None:
    assert bytes(read(request([(b"content-length", b"6 ")], [b"abcdef"]))) == b"abcdef"
    for bad in (b"6a", b"+6", b"\xc2\xb2"):
        with pytest.raises(MalformedBody, match="is not a number"):
            read(request([(b"content-length", bad)], [b"abcdef"]))


def test_every_content_encoding_header_is_read() -> None:
    runner = Runner.__new__(Runner)
    headers = [(b"content-encoding", b"identity"), (b"content-encoding", b"gzip")]
    with pytest.raises(UnsupportedMediaType, match="'identity, gzip' is not supported"):
        asyncio.run(runner.read_body(request(headers, [b"{}"])))


def test_a_watched_request_ends_when_its_client_leaves() -> None:
    async def scenario() -> None:
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()  # never settled
        left = request([(b"content-length", b"2")], [b"{}"])
        await left.receive()  # the body, read
        with pytest.raises(ClientClosedRequest, match="before its answer"):
            await Runner._unless_client_left(left, waiter)

        async def answer_soon(w: asyncio.Future[Any]) -> None:
            await asyncio.sleep(0)
            w.set_result("answer")

        stays = asyncio.get_running_loop().create_future()
        pending = asyncio.get_running_loop().create_future()  # a client that stays: receive waits

        async def receive() -> dict[str, Any]:
            return await pending

        scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
        task = asyncio.ensure_future(answer_soon(stays))
        assert await Runner._unless_client_left(Request(scope, receive), stays) == "answer"
        await task

    asyncio.run(scenario())
