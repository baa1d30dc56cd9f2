"""The HTTP floor: what a request costs before any server does any work for it.

    python -m benchmarks.floor_server --port 8002

A bare ASGI app under the same uvicorn as the service (uvloop and httptools when installed, no
access log): POST /v1/detect reads the whole body and sends one fixed answer, shaped like the
service's answer for one signal with no peak; GET /readyz answers 200. No framework, no
parsing, no model. Issue #5's concurrency-1 target (raw onnxruntime + 0.5 ms) has to cover
this much too: the harness measures it in the same run, on 1×1024 JSON at concurrency 1.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ANSWER = orjson.dumps({
    "model": {"name": "floor", "version": "0"},
    "threshold": 0.5,
    "min_distance": 1,
    "results": [{"probability": 0.0, "detected": False, "peaks": []}],
})  # fmt: skip
JSON_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "POST" and scope["path"] == "/v1/detect":
        more = True
        while more:  # the whole body, as any server must read it
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": ANSWER})
        return
    ok = scope["method"] == "GET" and scope["path"] == "/readyz"
    body = b'{"ready":true}' if ok else b'{"detail":"Not Found"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200 if ok else 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    a = p.parse_args()
    # uvicorn stops gracefully on SIGTERM, then re-raises it: exit 0 instead, as the service does.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        app, host=a.host, port=a.port, workers=1, access_log=False, log_level="warning", lifespan="off"
    )


if __name__ == "__main__":
    main()
