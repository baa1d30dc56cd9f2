"""Closed-loop HTTP load from this process: Python asyncio + aiohttp (on uvloop when installed).

``concurrency`` workers share one keep-alive connection pool; each sends its next request as
soon as the previous one returned, until the phase's duration (or request count) is used up,
then waits for its request in flight. Every response is checked (status 200, a JSON object
whose ``results`` has one entry per signal sent); anything else counts as an error. The
client's own CPU time (getrusage of this process) is measured per phase.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import resource
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson

from benchmarks.report import median_known

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop ships with the service's dependencies
    uvloop = None

CLIENT = f"python asyncio + aiohttp {aiohttp.__version__}" + (" on uvloop" if uvloop else "")
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Payload:
    """One request body, sent unchanged by every worker."""

    kind: str  # "json" | "npy" (POST to the server's detection path) | "oip" (path below)
    body: bytes
    content_type: str
    signals: int
    samples: int
    path: str | None = None  # the request's path, if not the server's detection path

    @property
    def needle(self) -> tuple[str, int]:
        """What an answer holds once per signal (/v1: a "peaks" list; /v2: one "probability"
        output for all of them), and how many times."""
        return ('"probability"', 1) if self.kind == "oip" else ('"peaks"', self.signals)


def make_signals(
    rows: int, length: int, template: Sequence[float] | None = None, seed: int = 0
) -> np.ndarray:
    """White noise with the model's shape added about every 400 samples (so peaks get found)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, length), dtype=np.float32)
    if template:
        t = 4.0 * np.asarray(template, dtype=np.float32) / max(float(np.max(np.abs(template))), 1e-9)
        for row in x:
            for start in rng.integers(0, max(length - t.size, 1), size=max(length // 400, 1)):
                row[start : start + t.size] += t[: length - start]
    return x


def json_payload(signals: np.ndarray) -> Payload:
    body = orjson.dumps({"signals": signals}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Payload("json", body, "application/json", signals.shape[0], signals.size)


def npy_payload(signals: np.ndarray) -> Payload:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(signals, dtype=np.float32))
    return Payload("npy", buf.getvalue(), "application/x-npy", signals.shape[0], signals.size)


def oip_payload(signals: np.ndarray, model: str) -> Payload:
    """The same signals as an Open Inference Protocol JSON request to ``/v2/models/<model>/infer``
    (one FP32 input, its data flat, row-major)."""
    request = {
        "inputs": [
            {"name": "signal", "shape": list(signals.shape), "datatype": "FP32", "data": signals.ravel()}
        ]
    }
    body = orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY)
    path = f"/v2/models/{model}/infer"
    return Payload("oip", body, "application/json", signals.shape[0], signals.size, path)


def check_response(
    status: int, body: bytes, signals: int, kind: str = "json", expected: dict[str, Any] | None = None
) -> str | None:
    """None if the response keeps the contract for ``signals`` signals (``kind`` "oip": the Open
    Inference Protocol's) and, given ``expected`` (the model's /v1 answer for the signals sent,
    ``reference.ReferenceModel.answer``), gives that answer (``answer_problem``); else what is
    wrong."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"HTTP 200 with a body that is not JSON: {body[:200]!r}"
    problem = _check_oip(doc, signals) if kind == "oip" else _check_v1(doc, signals)
    if problem is None and expected is not None:
        problem = answer_problem(doc, expected, kind)
    return problem


def _check_v1(doc: Any, signals: int) -> str | None:
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list) or len(results) != signals:
        got = len(results) if isinstance(results, list) else "no"
        return f"HTTP 200 with {got} results for {signals} signals"
    if not all(isinstance(r, dict) and isinstance(r.get("peaks"), list) for r in results):
        return "HTTP 200 with a result that has no 'peaks' list"
    return None


def _check_oip(doc: Any, signals: int) -> str | None:
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list):
        return "HTTP 200 with no 'outputs' list"
    by_name = {o.get("name"): o for o in outputs if isinstance(o, dict)}
    for name in ("probability", "detected", "peak_signal", "peak_index", "peak_probability"):
        if name not in by_name:
            return f"HTTP 200 without the output {name!r}"
    for name in ("probability", "detected"):
        shape, data = by_name[name].get("shape"), by_name[name].get("data")
        if shape != [signals] or not isinstance(data, list) or len(data) != signals:
            return f"HTTP 200 with output {name!r} of shape {shape} for {signals} signals"
    return None


# Probabilities are float32: a server batching signals differently may differ in the last bits.
PROBABILITY_TOLERANCE = 1e-5


Summary = tuple[Any, Any, list[tuple[Any, Any]]]  # detected, probability, [(peak index, probability)]


def _signals_of(doc: Any, kind: str) -> tuple[tuple[Any, Any], list[Summary]]:
    """(model name, version) and each signal's summary in an answer that keeps its contract
    (/v1's, or the Open Inference Protocol's)."""
    if kind != "oip":
        model = doc.get("model") or {}
        per_signal = [
            (
                r.get("detected"),
                r.get("probability"),
                [(p.get("index"), p.get("probability")) for p in r["peaks"]],
            )
            for r in doc["results"]
        ]
        return (model.get("name"), model.get("version")), per_signal
    data = {o.get("name"): o.get("data") or [] for o in doc["outputs"] if isinstance(o, dict)}
    signals: list[Summary] = [(d, p, []) for d, p in zip(data["detected"], data["probability"], strict=True)]
    for signal, index, probability in zip(
        data["peak_signal"], data["peak_index"], data["peak_probability"], strict=False
    ):
        if isinstance(signal, int) and 0 <= signal < len(signals):
            signals[signal][2].append((index, probability))
    return (doc.get("model_name"), doc.get("model_version")), signals


def _close(a: Any, b: float) -> bool:
    return isinstance(a, float | int) and abs(a - b) <= PROBABILITY_TOLERANCE


def answer_problem(doc: Any, expected: dict[str, Any], kind: str = "json") -> str | None:
    """None if ``doc``, an answer that keeps its contract, is the model's answer ``expected`` (a
    /v1 answer): the same model and version, and per signal the same decision and peak indices,
    with probabilities within ``PROBABILITY_TOLERANCE``; else the first difference. A fast answer
    that is wrong measures nothing."""
    want_model, want = _signals_of(expected, "json")
    model, got = _signals_of(doc, kind)
    if model != want_model:
        name, version = want_model
        return f"HTTP 200 from model {model[0]} {model[1]}, not the one measured ({name} {version})"
    for i, ((detected, probability, peaks), (want_detected, want_probability, want_peaks)) in enumerate(
        zip(got, want, strict=True)
    ):
        indices, want_indices = [p[0] for p in peaks], [p[0] for p in want_peaks]
        same = detected == want_detected and indices == want_indices and _close(probability, want_probability)
        if not same or not all(_close(p[1], q[1]) for p, q in zip(peaks, want_peaks, strict=True)):
            return (
                f"HTTP 200 with another answer than the model's for signal {i}: detected {detected}, "
                f"probability {probability}, peaks at {indices[:10]}; the model gives detected "
                f"{want_detected}, probability {want_probability:.6f}, peaks at {want_indices[:10]}"
            )
    return None


@dataclass(frozen=True)
class Phase:
    duration: float  # seconds in which new requests are started (0: skip the phase)
    max_requests: int | None = None  # stop starting requests after this many


@dataclass
class PhaseResult:
    requests: int = 0  # answered correctly
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0  # first request sent -> last answer received (wrk: the counted window)
    client_cpu_s: float = 0.0
    client_wall_s: float = 0.0  # wall time of the client's run, if not elapsed_s (wrk)
    percentiles_ms: tuple[float, float] | None = None  # (p50, p99) computed by the client (wrk)
    responses: int | None = None  # all correct and incorrect answers, window or not (wrk)
    identical: int | None = None  # answers byte-identical to the fully checked one (wrk)

    def summary(self, payload: Payload) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s) * 1000
        rps = self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0
        if self.percentiles_ms is not None:
            p50, p99 = self.percentiles_ms
        else:
            p50 = float(np.percentile(lat, 50)) if lat.size else None
            p99 = float(np.percentile(lat, 99)) if lat.size else None
        wall = self.client_wall_s or self.elapsed_s
        out = {
            "requests": self.requests,
            "errors": self.errors,
            "elapsed_s": self.elapsed_s,
            "requests_per_s": rps,
            "samples_per_s": rps * payload.samples,
            "p50_ms": p50,
            "p99_ms": p99,
            "client_cpu_s": self.client_cpu_s,
            "client_cpu_cores": self.client_cpu_s / wall if wall > 0 else 0.0,
        }
        if self.responses is not None:
            out["responses"] = self.responses
            out["identical"] = self.identical
        return out


def client_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _phase(
    session: aiohttp.ClientSession, url: str, payload: Payload, concurrency: int, phase: Phase
) -> PhaseResult:
    out = PhaseResult()
    if phase.duration <= 0:
        return out
    headers = {"Content-Type": payload.content_type}
    started = 0
    cpu0, t0 = client_cpu_s(), time.perf_counter()
    deadline = t0 + phase.duration

    async def worker() -> None:
        nonlocal started
        mine = 0  # each worker sends at least one request, however late it starts
        while (phase.max_requests is None or started < phase.max_requests) and (
            mine == 0 or time.perf_counter() < deadline
        ):
            started += 1
            mine += 1
            sent = time.perf_counter()
            try:
                async with session.post(url, data=payload.body, headers=headers) as resp:
                    problem = check_response(resp.status, await resp.read(), payload.signals, payload.kind)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                out.requests += 1
                out.latencies_s.append(time.perf_counter() - sent)
            else:
                out.errors += 1
                if len(out.error_examples) < MAX_EXAMPLES:
                    out.error_examples.append(problem)
                await asyncio.sleep(0.01)  # a dead server must not turn this into a busy loop

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.elapsed_s = time.perf_counter() - t0
    out.client_cpu_s = client_cpu_s() - cpu0
    return out


async def _run(
    url: str, payload: Payload, concurrency: int, phases: Sequence[Phase], timeout: float
) -> list[PhaseResult]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        return [await _phase(session, url, payload, concurrency, p) for p in phases]


def run_load(
    url: str, payload: Payload, concurrency: int, phases: Sequence[Phase], timeout: float = 120.0
) -> list[PhaseResult]:
    """Run the phases one after the other on the same connections (e.g. warm-up, then repeats)."""
    coro = _run(url, payload, concurrency, phases, timeout)
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


def checked_requests(
    url: str, payload: Payload, count: int, timeout: float = 120.0, expected: dict[str, Any] | None = None
) -> tuple[PhaseResult, bytes | None]:
    """``count`` requests one after the other, each checked in full (``check_response``, against
    the model's answer ``expected`` when given), on one connection; the result and the first
    correct answer's body (None if none was correct)."""
    out, first = PhaseResult(), None
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    headers = {"Content-Type": payload.content_type}
    t0, cpu0 = time.perf_counter(), client_cpu_s()
    try:
        for _ in range(count):
            sent = time.perf_counter()
            try:
                connection.request("POST", parts.path, body=payload.body, headers=headers)
                response = connection.getresponse()
                body = response.read()
                problem = check_response(response.status, body, payload.signals, payload.kind, expected)
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                body, problem = b"", f"{type(exc).__name__}: {exc}"
            if problem is None:
                out.requests += 1
                out.latencies_s.append(time.perf_counter() - sent)
                first = body if first is None else first
            else:
                out.errors += 1
                if len(out.error_examples) < MAX_EXAMPLES:
                    out.error_examples.append(problem)
    finally:
        connection.close()
    out.elapsed_s = time.perf_counter() - t0
    out.client_cpu_s = client_cpu_s() - cpu0
    return out, first


def median_summary(results: Sequence[PhaseResult], payload: Payload) -> dict[str, Any]:
    """Medians over repeated phases; errors and requests are totals; each repeat kept as well."""
    runs = [r.summary(payload) for r in results]
    medians = {
        k: median_known(run[k] for run in runs)
        for k in ("requests_per_s", "samples_per_s", "p50_ms", "p99_ms", "client_cpu_cores")
    }
    examples = [e for r in results for e in r.error_examples][:MAX_EXAMPLES]
    return {
        **medians,
        "requests": sum(r.requests for r in results),
        "errors": sum(r.errors for r in results),
        "error_examples": examples,
        "repeats": runs,
    }
