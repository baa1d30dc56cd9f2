"""The benchmark harness (issue #5): raw onnxruntime, the service, a naive FastAPI server, LitServe.

    python -m benchmarks.run            # about 7 minutes -> benchmarks/results/latest.{json,md}
    python -m benchmarks.run --quick    # about 1 minute  -> benchmarks/results/quick.{json,md}

1. Raw onnxruntime (this process, the service's session) on 1x1024, 64x1024 and the windows of
   a 1x1,000,000 signal; single-call latency of 1x1024, back to back and paced.
2. Each server as a real process on a free loopback port, one at a time, loaded by a closed-loop
   client: wrk (benchmarks/wrkload.py, Debian's package; the default when installed) or an
   asyncio client in this process (--client python, benchmarks/loadgen.py). JSON and .npy
   bodies, 1x1024 and 64x1024, concurrency 1, 8 and 32; the service also with
   SHAPE_DETECTOR_WORKERS=2 on 1x1024 at concurrency 32 ("service-w2"), the service holding a
   CPU latency request of 0 µs (SHAPE_DETECTOR_CPU_LATENCY_US=0, "service-lat0") on 1x1024 JSON
   at concurrency 1 and 32 with the raw call timed again while it holds it, the service with the
   opt-in same-CPU hand-off (SHAPE_DETECTOR_SAME_CPU_MAX_SAMPLES=16384, "service-samecpu") on
   1x1024 JSON at concurrency 1, the service's /v2
   route (Open Inference Protocol JSON, "oip") on 1x1024 at concurrency 1 and 32, and a few
   1x10,000,000 .npy requests (Python client) with its peak RSS growth measured.
3. The concurrency-1 floor of this machine: a bare ASGI app under uvicorn that reads the body
   and sends a fixed answer ("floor", 1x1024 JSON at concurrency 1; benchmarks/floor_server.py),
   the raw call paced as at concurrency 1 (a pause before each call), and the cost of waking a
   thread on the same and on another CPU (benchmarks/wakeup.py).
4. Side by side: the service, the naive server and LitServe up at once, in alternating rounds
   of 1x1024 JSON at concurrency 32, each round ending with the service at concurrency 1 (and
   service-samecpu, up too) and the raw call; ratios within each round (the VM's speed drifts
   over a run).
5. Medians over repeats; ratios service / raw, service / naive and service / LitServe; issue
   #5's targets, met or not.

Timings never fail the run: it exits 1 only for errors (a server that does not start or dies,
a response that is not 200 or does not have one result per signal, a measured phase too short
for any answer). The total time is bounded:
past --budget seconds the remaining workloads run one short repeat each (marked "reduced").
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.core.card import CardError, load_card
from app.core.model import InferenceOptions, OnnxModel
from app.cpu_latency import DEVICE, current_limit
from benchmarks import loadgen, report, servers, wakeup, wrkload
from benchmarks.loadgen import Payload, Phase
from benchmarks.raw import latency_1x1024, measure_raw
from benchmarks.reference import ReferenceModel

ROOT = servers.ROOT
SERVERS = ("service", "naive", "litserve", "floor")
CLIENTS = ("wrk", "python")
CHECKED_REQUESTS = 3  # per workload, before and after wrk's load, checked in full


@dataclass(frozen=True)
class Config:
    model_dir: Path = ROOT / "models" / "bump"
    servers: tuple[str, ...] = SERVERS
    shapes: tuple[tuple[int, int], ...] = ((1, 1024), (64, 1024))
    concurrency: tuple[int, ...] = (1, 8, 32)
    litserve_all: bool = True  # False: only the 1x1024 JSON concurrency-32 workload
    warmup_s: float = 1.0
    duration_s: float = 2.5
    repeats: int = 3
    big_length: int = 10_000_000  # 0: no long-signal requests
    big_repeats: int = 3
    raw_duration_s: float = 1.0
    raw_repeats: int = 5
    raw_long_length: int = 1_000_000  # the raw case that runs the service's windows
    latency_calls: int = 1000
    workers: int = 1  # the service's SHAPE_DETECTOR_WORKERS
    # The service again with these SHAPE_DETECTOR_WORKERS (processes), on the 1x1024 workloads at
    # the highest concurrency only: where one process's event loop is the bottleneck.
    more_workers: tuple[int, ...] = (2,)
    # The service again with this SHAPE_DETECTOR_CPU_LATENCY_US ("service-lat<n>"), on 1x1024 JSON
    # at concurrency 1 and the highest; None: not run. It needs write access to
    # /dev/cpu_dma_latency (root on Linux); without it, it is listed as not run.
    cpu_latency_us: int | None = 0
    # The service again with this SHAPE_DETECTOR_SAME_CPU_MAX_SAMPLES ("service-samecpu", the
    # opt-in same-CPU hand-off), on 1x1024 JSON at concurrency 1 and in each side-by-side round;
    # None: not run.
    same_cpu_max_samples: int | None = 16384
    # The service's /v2 route (Open Inference Protocol JSON, body "oip") on 1x1024 at concurrency
    # 1 and the highest; the other servers do not speak it.
    oip: bool = True
    # Issue #5's 1x1024 JSON targets again in alternating rounds, every server up at once: each
    # round runs the service, the naive server and LitServe at the highest concurrency one after
    # the other, then the service at concurrency 1 and the raw call. Ratios are taken within a
    # round, so a change in the VM's speed between rounds moves both sides. 0: not run.
    side_by_side_rounds: int = 3
    # onnxruntime threads per call in every server and raw: 1, the service's own default
    # (SHAPE_DETECTOR_INTRA_OP_THREADS); 0: onnxruntime's default, one per core.
    intra_op_threads: int = 1
    client: str = "wrk"  # load generator for the fixed-body workloads: "wrk" or "python"
    budget_s: float = 480.0
    timeout_s: float = 120.0  # per request
    big_timeout_s: float = 600.0


QUICK = Config(
    warmup_s=0.3,
    duration_s=0.8,
    repeats=1,
    big_repeats=1,
    raw_duration_s=0.3,
    raw_repeats=3,
    latency_calls=200,
    budget_s=75.0,
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU ticks of the whole machine, from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def workloads(cfg: Config, name: str) -> list[tuple[str, int, int, int]]:
    """(body, rows, length, concurrency) for one server, in the order they run."""
    bodies = ("json", "npy")
    ends = sorted({min(cfg.concurrency), max(cfg.concurrency)})  # the lowest and highest concurrency
    if name == "litserve" and not cfg.litserve_all:
        return [("json", 1, 1024, 32)]
    if name == "floor":  # the concurrency-1 target's workload only
        return [("json", 1, 1024, 1)] if (1, 1024) in cfg.shapes and 1 in cfg.concurrency else []
    if name.startswith("service-lat"):  # 1x1024 JSON, concurrency 1 and the highest
        if (1, 1024) not in cfg.shapes:
            return []
        return [("json", 1, 1024, c) for c in ends]
    if name == "service-samecpu":  # 1x1024 JSON at concurrency 1 only
        return [("json", 1, 1024, 1)] if (1, 1024) in cfg.shapes and 1 in cfg.concurrency else []
    if name.startswith("service-w"):  # 1x1024 at the highest concurrency only
        return [(b, 1, 1024, max(cfg.concurrency)) for b in bodies if (1, 1024) in cfg.shapes]
    rows = [(b, r, n, c) for (r, n) in cfg.shapes for c in cfg.concurrency for b in bodies]
    if name == "service" and cfg.oip and (1, 1024) in cfg.shapes:  # /v2 (OIP JSON): 1x1024
        rows += [("oip", 1, 1024, c) for c in ends]
    return rows


def measure_workload(
    server: servers.Server,
    payload: Payload,
    concurrency: int,
    phases: list[Phase],
    timeout: float,
    client: str = "python",
    answer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Warm-up (phases[0]) and measured repeats on one server; errors of all phases count.

    With ``client="wrk"`` the load comes from wrk, and a few requests before and after it are
    sent and checked in full by the Python client (the first answer is also the one wrk's
    script compares every response with). ``answer``: the model's /v1 answer for the payload's
    signals (``ReferenceModel.answer``); the requests checked in full must give it, with either
    client, so that every response byte-identical to them is the model's answer too.
    """
    checks: list[loadgen.PhaseResult] = []
    expected = None
    url = server.url + payload.path if payload.path else server.detect_url
    checked = client == "wrk" or answer is not None
    if checked:
        pre, expected = loadgen.checked_requests(url, payload, CHECKED_REQUESTS, timeout, answer)
        checks.append(pre)
    peak_reset = server.reset_peak()
    cpu0, (busy0, total0), client0 = server.cpu_s(), machine_busy(), loadgen.client_cpu_s()
    t0 = time.perf_counter()
    if client == "wrk":
        # One connection's answer takes about one request's latency per connection ahead of it.
        cycle = concurrency * statistics.median(pre.latencies_s) if pre.latencies_s else 0.0
        results = wrkload.run_load(url, payload, concurrency, phases, timeout, expected, cycle)
    else:
        results = loadgen.run_load(url, payload, concurrency, phases, timeout)
    wall = time.perf_counter() - t0
    busy1, total1 = machine_busy()
    server_cores = (server.cpu_s() - cpu0) / wall
    client_cpu = loadgen.client_cpu_s() - client0  # this process (the whole Python client)
    if client == "wrk":
        client_cpu += sum(r.client_cpu_s for r in results)  # wrk itself
    client_cores = client_cpu / wall
    busy_cores = (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)
    requests_run = sum(r.responses if r.responses is not None else r.requests for r in results)
    if checked:
        post, _ = loadgen.checked_requests(url, payload, CHECKED_REQUESTS, timeout, answer)
        checks.append(post)
    row = loadgen.median_summary(results[1:], payload)
    row["errors"] += results[0].errors + sum(c.errors for c in checks)
    examples = results[0].error_examples + row["error_examples"]
    examples += [e for c in checks for e in c.error_examples]
    row["error_examples"] = examples[: loadgen.MAX_EXAMPLES]
    mem = server.memory_mib()
    if not server.alive():
        row["errors"] += 1
        row["error_examples"].append(f"server exited with {server.process.returncode}:\n{server.log()}")
    if checked:
        row["checked_requests"] = sum(c.requests + c.errors for c in checks)
    if client == "wrk":
        row["responses"] = requests_run
        row["identical_responses"] = sum(r.identical or 0 for r in results)
    return {
        **row,
        "client": client,
        "server_rss_mib": mem["rss_mib"],
        "server_peak_rss_mib": mem["peak_rss_mib"],
        "server_processes": mem["processes"],
        "peak_reset": peak_reset,  # False: the peak RSS is the one since the server started
        "server_cpu_cores": server_cores,
        "server_cpu_ms_per_request": server_cores * wall * 1000 / max(requests_run, 1),
        "client_cpu_cores_overall": client_cores,
        "other_cpu_cores": max(busy_cores - server_cores - client_cores, 0.0),
        "wall_s": wall,
    }


def measure_big(
    cfg: Config, server: servers.Server, template: list[float] | None, reduced: bool
) -> dict[str, Any]:
    """A few 1 x big_length .npy requests, one at a time; the server's peak RSS growth."""
    payload = loadgen.npy_payload(loadgen.make_signals(1, cfg.big_length, template, seed=3))
    before = server.memory_mib()
    repeats = 1 if reduced else cfg.big_repeats
    # No warm-up (the server is warm from the other workloads); one request per repeat.
    row = measure_workload(server, payload, 1, [Phase(0.0)] + [Phase(1e9, 1)] * repeats, cfg.big_timeout_s)
    return {
        **row,
        "latencies_ms": [r["p50_ms"] for r in row["repeats"]],
        "rss_before_mib": before["rss_mib"],
        "peak_rss_before_mib": before["peak_rss_mib"],
        "peak_rss_growth_mib": row["server_peak_rss_mib"] - before["rss_mib"],
        "body_mib": len(payload.body) / 2**20,
        "reduced": reduced,
    }


def service_workers(name: str, cfg: Config) -> int:
    """SHAPE_DETECTOR_WORKERS of a service variant: "service" (cfg.workers) or "service-w<n>"."""
    return int(name.removeprefix("service-w")) if name.startswith("service-w") else cfg.workers


def spec_for(name: str, cfg: Config, port: int) -> servers.ServerSpec:
    if name.startswith("service"):
        latency = cfg.cpu_latency_us if name.startswith("service-lat") else None
        same_cpu = cfg.same_cpu_max_samples if name == "service-samecpu" else None
        spec = servers.service_spec(
            cfg.model_dir, port, service_workers(name, cfg), cfg.intra_op_threads, latency, same_cpu
        )
        return replace(spec, name=name)
    if name == "naive":
        return servers.naive_spec(cfg.model_dir, port, cfg.intra_op_threads)
    if name == "floor":
        return servers.floor_spec(port)
    return servers.litserve_spec(cfg.model_dir, port, cfg.intra_op_threads)


def run_server(
    name: str,
    cfg: Config,
    template: list[float] | None,
    log_dir: Path,
    started: float,
    result: dict[str, Any],
) -> None:
    port = servers.free_port()
    spec = spec_for(name, cfg, port)
    log(f"[{time.perf_counter() - started:6.1f}s] starting {name}: {' '.join(spec.command)}")
    try:
        server = servers.start(
            spec, port, log_dir, processes=service_workers(name, cfg) if name.startswith("service") else 1
        )
    except servers.ServerError as exc:
        result["failures"].append(f"{name}: {exc}")
        log(f"  {name} did not start: {exc}")
        return
    info: dict[str, Any] = {
        "command": spec.command,
        "settings": spec.settings,
        "detect_path": spec.detect_path,
        "startup_s": server.startup_s,
        "idle_rss_mib": server.memory_mib()["rss_mib"],
    }
    result["servers"][name] = info
    # Every server but the floor (a fixed answer, by design) must give the model's answer.
    reference = None if name == "floor" else ReferenceModel(cfg.model_dir, cfg.intra_op_threads)
    try:
        if name.startswith("service-lat"):
            info["cpu_latency_limit_us"] = current_limit()
        for body, rows, length, conc in workloads(cfg, name):
            base = {"server": name, "body": body, "rows": rows, "length": length, "concurrency": conc}
            if body == "npy" and not spec.accepts_npy:
                result["rows"].append({**base, "status": "n/a"})
                continue
            signals = loadgen.make_signals(rows, length, template)
            if body == "oip":
                payload = loadgen.oip_payload(signals, cfg.model_dir.name)
            else:
                payload = loadgen.json_payload(signals) if body == "json" else loadgen.npy_payload(signals)
            reduced = time.perf_counter() - started > cfg.budget_s
            phases = (
                [Phase(min(cfg.warmup_s, 0.2)), Phase(min(cfg.duration_s, 0.5))]
                if reduced
                else ([Phase(cfg.warmup_s)] + [Phase(cfg.duration_s)] * cfg.repeats)
            )
            answer = reference.answer(signals) if reference is not None else None
            row = measure_workload(server, payload, conc, phases, cfg.timeout_s, cfg.client, answer)
            result["rows"].append({**base, "status": "ok", "reduced": reduced, **row})
            log(f"[{time.perf_counter() - started:6.1f}s]   {report.row_line(result['rows'][-1])}")
            if name.startswith("service-lat") and conc == 1:
                # Both sides of the concurrency-1 target in one machine state: the raw call timed
                # again right after, while the server (idle now) still holds its request.
                model = OnnxModel(cfg.model_dir, raw_options(cfg))
                info["raw"] = latency_1x1024(model, template, cfg.latency_calls)
        if name == "service" and cfg.big_length:
            reduced = time.perf_counter() - started > cfg.budget_s
            big = measure_big(cfg, server, template, reduced)
            base = {"server": name, "body": "npy", "rows": 1, "length": cfg.big_length, "concurrency": 1}
            result["rows"].append({**base, "status": "ok", **big})
            log(f"[{time.perf_counter() - started:6.1f}s]   {report.row_line(result['rows'][-1])}")
    finally:
        info["exit_code"] = server.stop()
        info["log_tail"] = server.log()[-1500:]


def load_generator(client: str) -> dict[str, str]:
    if client == "wrk":
        return {
            "client": f"{wrkload.version()} (one thread, Lua script benchmarks/load.lua)",
            "how": "closed loop: N keep-alive connections, each sending its next request when the previous "
            "answer arrived; requests/s counted over a window inside each run (no answer in flight "
            "lost at the end), p50/p99 from wrk's histogram of the run; every response checked "
            "(200, byte-identical to a fully checked answer or one 'peaks' per signal), plus "
            f"{CHECKED_REQUESTS} requests before and {CHECKED_REQUESTS} after each workload checked in full "
            "by the Python client, against the model's answer computed in this process (every server "
            "but the floor); the 1x10M requests come from the Python client (aiohttp). "
            "Client CPU: wrk's (rusage of the child) plus this process's",
        }
    return {
        "client": loadgen.CLIENT,
        "how": "closed loop: N concurrent workers in one process, each sending its next request "
        "when the previous one returned; keep-alive; every response checked (200, one 'peaks' per "
        f"signal), plus {CHECKED_REQUESTS} requests before and {CHECKED_REQUESTS} after each workload "
        "checked against the model's answer computed in this process (every server but the floor); "
        "client CPU from getrusage of this process",
    }


SIDE_BY_SIDE = ("service", "naive", "litserve")


def side_by_side(
    cfg: Config, template: list[float] | None, log_dir: Path, started: float, result: dict[str, Any]
) -> None:
    """``cfg.side_by_side_rounds`` alternating rounds of the 1x1024 JSON target workloads (see
    ``Config``); per round: requests/s of each server at the highest concurrency, the service's
    p50 at concurrency 1 and the raw call's p50 right after. Past ``cfg.budget_s``, one short
    round ("reduced")."""
    names = [n for n in SIDE_BY_SIDE if n in cfg.servers]
    if cfg.side_by_side_rounds < 1 or "service" not in names or (1, 1024) not in cfg.shapes:
        return
    c1_names = ["service", *(["service-samecpu"] if cfg.same_cpu_max_samples is not None else [])]
    conc = max(cfg.concurrency)
    reduced = time.perf_counter() - started > cfg.budget_s
    count = 1 if reduced else cfg.side_by_side_rounds
    duration = min(cfg.duration_s, 0.5) if reduced else cfg.duration_s
    signals = loadgen.make_signals(1, 1024, template)
    payload = loadgen.json_payload(signals)
    answer = ReferenceModel(cfg.model_dir, cfg.intra_op_threads).answer(signals)
    model = OnnxModel(cfg.model_dir, raw_options(cfg))
    running: dict[str, servers.Server] = {}
    rounds: list[dict[str, Any]] = []
    try:
        for name in names + c1_names[1:]:
            port = servers.free_port()
            try:
                running[name] = servers.start(spec_for(name, cfg, port), port, log_dir / "side-by-side")
            except servers.ServerError as exc:
                result["failures"].append(f"side by side, {name}: {exc}")
                return
        log(f"[{time.perf_counter() - started:6.1f}s] side by side: {', '.join(names)} up; "
            f"{count} rounds" + (" (reduced)" if reduced else ""))  # fmt: skip
        for r in range(count):
            first_warm = min(cfg.warmup_s, 0.2) if reduced else cfg.warmup_s
            warm = Phase(first_warm if r == 0 else min(cfg.warmup_s, 0.5))
            row: dict[str, Any] = {}
            loads = [(name, running[name], conc) for name in names]
            loads += [(f"{name}-c1", running[name], 1) for name in c1_names]
            for name, server, c in loads:
                phases = [warm, Phase(duration)]
                m = measure_workload(server, payload, c, phases, cfg.timeout_s, cfg.client, answer)
                if m["errors"]:
                    result["failures"].append(f"side by side, {name} round {r + 1}: {m['error_examples']}")
                row[name] = {k: m[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "errors")}
            row["raw"] = latency_1x1024(model, template, cfg.latency_calls)["latency_1x1024"]
            rounds.append(row)
            rates = ", ".join(f"{n} {row[n]['requests_per_s']:.0f} req/s" for n in names)
            c1 = ", ".join(f"{n} {report.ms(row[f'{n}-c1']['p50_ms'])} ms" for n in c1_names)
            at = time.perf_counter() - started
            log(f"[{at:6.1f}s]   round {r + 1}: {rates}; c1 {c1}, raw {report.ms(row['raw']['p50_ms'])} ms")
    finally:
        for server in running.values():
            server.stop()
    result["side_by_side"] = {"concurrency": conc, "servers": names, "rounds": rounds, "reduced": reduced}


def raw_options(cfg: Config) -> InferenceOptions:
    """Raw onnxruntime runs what the service would."""
    settings = servers.service_settings(
        cfg.model_dir, workers=cfg.workers, intra_op_threads=cfg.intra_op_threads
    )
    return InferenceOptions(
        window=settings.WINDOW,
        max_batch_samples=settings.MAX_BATCH_SAMPLES,
        intra_op_threads=settings.INTRA_OP_THREADS,
    )


def service_names(cfg: Config, result: dict[str, Any]) -> list[str]:
    """The servers to run, in order: the service's variants right after it. A variant that cannot
    run here is recorded in ``result["not_run"]``."""
    names = list(cfg.servers)
    if "service" not in names:
        return names
    extra = [f"service-w{w}" for w in cfg.more_workers if w != cfg.workers]
    if cfg.same_cpu_max_samples is not None:
        extra.append("service-samecpu")
    if cfg.cpu_latency_us is not None:
        name = f"service-lat{cfg.cpu_latency_us}"
        if os.access(DEVICE, os.W_OK):
            extra.append(name)
        else:
            result["not_run"].append(f"{name}: {DEVICE} is not writable here (it needs root on Linux)")
    at = names.index("service") + 1
    return names[:at] + extra + names[at:]


def measure(cfg: Config, log_dir: Path | None = None) -> dict[str, Any]:
    """Run every measurement of ``cfg``; the result dict that report.py renders."""
    started = time.perf_counter()
    card = load_card(cfg.model_dir)
    template = list(card.template) if card.template else None
    result: dict[str, Any] = {
        "schema": 1,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"name": card.name, "version": card.version, "dir": str(cfg.model_dir)},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "machine": report.machine(),
        "load_average_start": list(os.getloadavg()),
        "load_generator": load_generator(cfg.client),
        "servers": {},
        "rows": [],
        "failures": [],
        "not_run": [],
    }
    options = raw_options(cfg)
    log(f"raw onnxruntime (window {options.window}, max batch samples {options.max_batch_samples})")
    result["raw"] = measure_raw(
        cfg.model_dir,
        options,
        template,
        cfg.raw_duration_s,
        cfg.raw_repeats,
        cfg.latency_calls,
        cfg.raw_long_length,
    )
    log("thread wake-ups: one CPU, two CPUs")
    result["wakeups"] = wakeup.measure()
    with tempfile.TemporaryDirectory(prefix="shape-bench-") as tmp:
        for name in service_names(cfg, result):
            run_server(name, cfg, template, log_dir or Path(tmp), started, result)
        side_by_side(cfg, template, log_dir or Path(tmp), started, result)
    result["load_average_end"] = list(os.getloadavg())
    result["elapsed_s"] = time.perf_counter() - started
    result["ratios"] = report.ratios(result)
    result["errors"] = sum(r.get("errors", 0) for r in result["rows"]) + len(result["failures"])
    return result


def whole(least: int, none: bool = False) -> Callable[[str], int | None]:
    """An argparse type: a whole number of at least ``least`` (with ``none``, '' for none)."""

    def parse(text: str) -> int | None:
        if none and text == "":
            return None
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            also = " ('' for none)" if none else ""
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least {least}{also}")
        return value

    return parse


def whole_list(least: int) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated whole numbers of at least ``least`` ('' for none)."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(whole(least)(w) or 0) for w in text.split(",") if w)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give whole numbers of at least {least}, separated by commas ('' for none)"
            ) from None

    return parse


def seconds(positive: bool) -> Callable[[str], float]:
    """An argparse type: seconds, above 0 (``positive``) or at least 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            least = "above 0" if positive else "0 or more"
            raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds {least}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about a minute: short phases, one repeat")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, from {','.join(SERVERS)}")
    p.add_argument("--duration", type=seconds(positive=True), help="seconds per measured repeat")
    p.add_argument("--repeats", type=whole(1), help="measured repeats per workload (medians are reported)")
    p.add_argument(
        "--budget", type=seconds(positive=False), help="seconds after which workloads run one short repeat"
    )
    p.add_argument(
        "--client",
        choices=CLIENTS,
        help="load generator for the fixed-body workloads (default: wrk if installed, else python)",
    )
    p.add_argument("--workers", type=whole(1), default=1, help="the service's SHAPE_DETECTOR_WORKERS")
    p.add_argument(
        "--more-workers",
        type=whole_list(1),
        default="2",
        help="comma-separated SHAPE_DETECTOR_WORKERS to run the service with again on the 1x1024 "
        "concurrency-32 workloads ('' for none)",
    )
    p.add_argument("--no-oip", action="store_true", help="skip the service's /v2 (OIP JSON) workloads")
    p.add_argument(
        "--same-cpu",
        type=whole(0, none=True),
        default="16384",
        help="SHAPE_DETECTOR_SAME_CPU_MAX_SAMPLES of the service-samecpu run on 1x1024 JSON at "
        "concurrency 1 and side by side ('' for none)",
    )
    p.add_argument(
        "--cpu-latency",
        type=whole(0, none=True),
        default="0",
        help="SHAPE_DETECTOR_CPU_LATENCY_US of the service-lat<n> run on 1x1024 JSON at concurrency "
        "1 and 32 ('' for none; needs write access to /dev/cpu_dma_latency)",
    )
    p.add_argument(
        "--intra-op-threads",
        type=whole(0),
        default=Config.intra_op_threads,
        help="onnxruntime threads per call, every server and raw (default 1, the service's; 0: per core)",
    )
    p.add_argument("--model-dir", type=Path, default=Config.model_dir)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = p.parse_args(argv)
    names = tuple(s for s in a.servers.split(",") if s)
    if unknown := set(names) - set(SERVERS):
        p.error(f"unknown server(s) {sorted(unknown)}; choose from {SERVERS}")
    try:
        load_card(a.model_dir)
    except CardError as exc:
        p.error(f"--model-dir: {exc}; give a model's directory (models/bump, for one)")
    cfg = replace(
        QUICK if a.quick else Config(),
        servers=names,
        workers=a.workers,
        more_workers=a.more_workers,
        cpu_latency_us=a.cpu_latency,
        oip=not a.no_oip,
        same_cpu_max_samples=a.same_cpu,
        intra_op_threads=a.intra_op_threads,
        model_dir=a.model_dir,
    )
    client = a.client or ("wrk" if wrkload.executable() else "python")
    if client == "wrk" and not wrkload.executable():
        p.error("--client wrk: wrk is not installed (apt-get install -y wrk; make bench installs it)")
    if client == "python" and a.client is None:
        log("wrk is not installed: the Python client generates the load (make bench installs wrk)")
    cfg = replace(cfg, client=client)
    for field, value in (("duration_s", a.duration), ("repeats", a.repeats), ("budget_s", a.budget)):
        if value is not None:
            cfg = replace(cfg, **{field: value})
    result = measure(cfg)
    result["command"] = " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])])
    result["quick"] = a.quick
    paths = report.write(result, a.out, "quick" if a.quick else "latest")
    print(report.markdown(result))
    log(f"wrote {', '.join(str(x) for x in paths)}")
    for failure in result["failures"]:
        log(f"FAILED: {failure}")
    if result["errors"]:
        log(f"{result['errors']} error(s): see the Errors column and error_examples in the JSON")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
