"""Where one request's time goes: the real application in this process, without HTTP.

    python -m benchmarks.breakdown               # bump, one 1x1024 JSON signal, 3000 requests
    python -m benchmarks.breakdown --requests 500 --model arrival

Issue #5's concurrency-1 target compares the service's median latency with one raw
onnxruntime call. This tool splits the service's side of that comparison. The application
(``create_app``: its lifespan, middleware, routes, batcher) is called as an ASGI app, one
request at a time, twice:

- ``batcher``: the default path; the request is scored on the model's inference thread;
- ``inline``: ``SHAPE_DETECTOR_INLINE_MAX_SAMPLES`` set, so the same request is scored on the
  event loop. The difference is the cost of the hand-off between threads.

Timers wrapped around the pipeline's functions measure each stage inside those requests,
where the caches are colder than in a tight loop. The raw call is timed in a tight loop, as
the harness times it. The table gives per-request medians in milliseconds. It reports and
never fails on timing. The HTTP server and the client add the rest; the harness
(``python -m benchmarks.run``) measures that part end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

import app.api.deps as deps
from app.core.model import InferenceOptions, OnnxModel
from app.main import create_app
from app.settings import load_settings
from benchmarks.loadgen import json_payload, make_signals
from benchmarks.raw import call_latencies_ms

STAGES = ("read body", "decode", "onnxruntime", "respond")
Timings = defaultdict[str, float]


class Probe:
    """Wraps the pipeline's functions with timers that add into the current request's row."""

    def __init__(self) -> None:
        self.row: Timings = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)
        row = self

        if asyncio.iscoroutinefunction(original):

            @functools.wraps(original)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    row.row[stage] += time.perf_counter() - t0

            setattr(owner, name, timed_async)
        else:

            @functools.wraps(original)
            def timed(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    row.row[stage] += time.perf_counter() - t0

            setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original))

    def __enter__(self) -> Probe:
        self.wrap(deps.Runner, "read_body", "read body")
        self.wrap(deps, "decode_request", "decode")
        self.wrap(OnnxModel, "run", "onnxruntime")
        self.wrap(deps, "respond_many", "respond")
        self.wrap(deps.DetectCall, "__call__", "route")
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()


async def _requests(
    overrides: dict[str, Any], model: str, body: bytes, n: int, probe: Probe
) -> tuple[list[Timings], int]:
    """``n`` timed requests, one at a time; their timings and how many ran on the event loop."""
    application = create_app(load_settings(LOG_LEVEL="warning", **overrides))
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    path = f"/v1/models/{model}/detect"
    async with application.router.lifespan_context(application) as state:
        registry = state["registry"]
        deadline = time.monotonic() + 120
        while model not in {m.name for m in registry.models()}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"model {model!r} did not load")
            await asyncio.sleep(0.05)

        async def one() -> None:
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
                "state": dict(state),
            }
            chunks = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict[str, Any]:
                if chunks:
                    return chunks.pop()
                await asyncio.Event().wait()  # no disconnect: the request ends by responding
                raise AssertionError("unreachable")

            status: list[int] = []

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])

            t0 = time.perf_counter()
            await application(scope, receive, send)
            probe.row["application"] += time.perf_counter() - t0
            if status != [200]:
                raise RuntimeError(f"{path} answered {status}")

        for _ in range(max(50, n // 10)):  # warm-up (and past the lone-client delay)
            await one()
        await asyncio.sleep(deps.LONE_AFTER_S)
        stats = registry.statuses[model].batcher.stats
        inline_before = stats.now
        rows = []
        for _ in range(n):
            probe.row = defaultdict(float)
            await one()
            rows.append(probe.row)
        return rows, stats.now - inline_before


def raw_call_ms(model_dir: Path, signal: np.ndarray, n: int) -> float:
    """The median of ``n`` calls in a tight loop, with the service's session options."""
    model = OnnxModel(model_dir, InferenceOptions(intra_op_threads=load_settings().INTRA_OP_THREADS))
    return float(np.median(call_latencies_ms(model, signal[None].astype(np.float32), n, warm_up=50)))


def summarise(rows: list[Timings]) -> dict[str, float]:
    """Per-request medians (ms) of every stage and of the derived parts."""
    derived = []
    for r in rows:
        d = {k: v * 1e3 for k, v in r.items()}
        d["framework and middleware"] = d["application"] - d["route"]
        d["hand-off and the rest"] = d["route"] - sum(d.get(s, 0.0) for s in STAGES)
        derived.append(d)
    keys = ("application", *STAGES, "framework and middleware", "hand-off and the rest")
    return {k: statistics.median(d.get(k, 0.0) for d in derived) for k in keys}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="bump")
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--requests", type=int, default=3000, help="timed requests per path")
    a = p.parse_args(argv)

    card = orjson.loads((a.model_dir / a.model / "card.json").read_bytes())
    signals = make_signals(1, a.length, card.get("template"))  # the harness's signal and body
    signal, body = signals[0], json_payload(signals).body
    paths = {
        "batcher": {"MODEL_DIR": a.model_dir},
        "inline": {"MODEL_DIR": a.model_dir, "INLINE_MAX_SAMPLES": a.length},
    }
    raw = raw_call_ms(a.model_dir / a.model, signal, a.requests)
    results: dict[str, Any] = {"raw call (tight loop)": raw, "scored on the event loop": {}}
    for name, overrides in paths.items():
        with Probe() as probe:
            rows, inline = asyncio.run(_requests(overrides, a.model, body, a.requests, probe))
        results[name] = summarise(rows)
        results["scored on the event loop"][name] = inline

    print(f"1x{a.length} JSON ({len(body)} bytes) to model {a.model!r}: medians per request, ms")
    print(f"raw onnxruntime call, tight loop: {results['raw call (tight loop)']:.3f}")
    print(f"{'':28s}{'batcher':>10s}{'inline':>10s}")
    for key in results["batcher"]:
        print(f"{key:28s}{results['batcher'][key]:10.3f}{results['inline'][key]:10.3f}")
    on_loop = results["scored on the event loop"]
    print(f"requests scored on the event loop: {on_loop['batcher']} and {on_loop['inline']} of {a.requests}")
    return results


if __name__ == "__main__":
    main()
