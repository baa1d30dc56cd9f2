"""JSON decoding, measured: each route's plain path (simdjson) against its general one (orjson).

    python -m benchmarks.decode                  # models/bump, 7 turns
    python -m benchmarks.decode --turns 15

The bodies are the harness's (``benchmarks.loadgen``): ``/v1`` ``{"signals": [[...]]}`` and
``/v2`` an Open Inference Protocol request with its data flat, 1×1024 and 64×1024. Each turn
times ``decode_json`` (``/v1``) or ``decode_infer`` (``/v2``) as the service calls them, then
the same with the plain path switched off (``decode_plain_json`` or ``_plain_request`` made to
return None), so the two alternate and share the machine's drift; the table gives the median
over the turns of each turn's best time. Both paths must decode the same signals, or the run
fails. Reports; never fails on timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from app.core import oip, pipeline
from app.core.card import Card, load_card
from app.core.signals import Limits
from benchmarks.loadgen import json_payload, make_signals, oip_payload

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((1, 1024), (64, 1024))
LIMITS = Limits(max_signals=1024, max_samples=20_000_000, max_signal_length=10_000_000)


@contextmanager
def general_only(route: str) -> Iterator[None]:
    """The route's plain path switched off: every body takes the general one."""
    target, name = (pipeline, "decode_plain_json") if route == "/v1" else (oip, "_plain_request")
    with mock.patch.object(target, name, return_value=None):
        yield


def decoder(route: str, card: Card, body: bytes) -> Callable[[], list[Any]]:
    """The route's decoding of ``body`` as the service calls it; returns the signals."""
    if route == "/v1":
        return lambda: pipeline.decode_json(body, pipeline.Params(), LIMITS, card.min_length)[0]
    return lambda: oip.decode_infer(card, body, LIMITS).signals


def best(fn: Callable[[], Any], number: int) -> float:
    """The best of 3 timings of ``number`` calls, per call, in seconds."""
    return min(timeit.repeat(fn, number=number, repeat=3)) / number


def measure(model_dir: Path, turns: int = 7, budget_s: float = 0.02) -> list[dict[str, Any]]:
    card = load_card(model_dir)
    template = list(card.template) if card.template else None
    rows = []
    for n, length in SHAPES:
        signals = make_signals(n, length, template)
        bodies = (("/v1", json_payload(signals).body), ("/v2", oip_payload(signals, card.name).body))
        for route, body in bodies:
            decode = decoder(route, card, body)
            plain = decode()
            with general_only(route):
                general = decode()
            if [s.tobytes() for s in plain] != [s.tobytes() for s in general]:
                raise SystemExit(f"{route} {n}x{length}: the two paths decode different signals")
            number = max(1, int(budget_s / best(decode, 1)))
            fast, slow = [], []
            for _ in range(turns):
                fast.append(best(decode, number))
                with general_only(route):
                    slow.append(best(decode, number))
            rows.append(
                {
                    "route": route,
                    "shape": f"{n}x{length}",
                    "body_bytes": len(body),
                    "plain_s": statistics.median(fast),
                    "general_s": statistics.median(slow),
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| route | request | body | plain path (simdjson) | general path (orjson) | ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['route']} | {r['shape'].replace('x', '×')} | {r['body_bytes'] / 1000:.1f} kB "
            f"| {_time(r['plain_s'])} | {_time(r['general_s'])} | {r['general_s'] / r['plain_s']:.2f}× |"
        )
    return "\n".join(lines)


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "bump")
    p.add_argument("--turns", type=int, default=7, help="alternating turns of the two paths")
    args = p.parse_args(argv)
    print(f"JSON decoding, {args.turns} alternating turns, median of each turn's best:")
    print(markdown(measure(args.model_dir, turns=args.turns)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
