"""The harness's result dict -> ratios, a Markdown report, and the files under benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "onnxruntime",
    "numpy",
    "fastapi",
    "uvicorn",
    "pydantic",
    "orjson",
    "pysimdjson",
    "litserve",
    "aiohttp",
)
ROOT = Path(__file__).resolve().parents[1]
# What a run measures, besides the installed packages: the service, its models, the harness with
# the servers it compares the service with, and the dependency pins. An uncommitted change in any
# of them makes the numbers those of another code than the commit's (the results and the docs do not).
MEASURED = (
    "app",
    "models",
    "benchmarks",
    ":(exclude)benchmarks/results",
    ":(exclude)*.md",
    "pyproject.toml",
    "constraints.txt",
    "requirements-serve.txt",
)


def machine(root: Path = ROOT) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    mem_kib = 0
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem_kib = int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal")))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        git = ["git", "--no-optional-locks", "-C", str(root)]  # read-only: never touches the index
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=all", "--", *MEASURED],
            capture_output=True,
            text=True,
        )
        changed = [line[3:] for line in status.stdout.splitlines()]
        commit_id = commit.stdout.strip() or None
    except OSError:
        commit_id, changed = None, []
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kib / 2**20, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit_id,
        "uncommitted": changed,  # in MEASURED: what was measured may differ from the commit
    }


def raw_key(raw: dict[str, Any], rows: int, length: int) -> str | None:
    """The raw onnxruntime case that does the same inference work (per sample) as this request."""
    if f"{rows}x{length}" in ("1x1024", "64x1024"):
        return f"{rows}x{length}"
    return raw["long_case"] if rows == 1 and length > raw["window"] else None


def best_raw(case: dict[str, Any]) -> float | None:
    """The raw case's limit: the better of one caller and one per CPU (``benchmarks.raw``); a
    result from before the parallel case: its one caller."""
    return case.get("best_samples_per_s", case.get("samples_per_s"))


def median_known(values: Iterable[float | None]) -> float | None:
    """The median of the values that are known (not None); None if none is."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _sub(a: float | None, b: float | None) -> float | None:
    """``a - b``, or None if either is unknown (a phase with no correct answer has no latency)."""
    return None if a is None or b is None else a - b


def measured(result: dict[str, Any]) -> dict[tuple[str, str, int, int, int], dict[str, Any]]:
    """The workloads measured ("ok"), by (server, body, rows, length, concurrency)."""
    return {
        (r["server"], r["body"], r["rows"], r["length"], r["concurrency"]): r
        for r in result["rows"]
        if r.get("status") == "ok"
    }


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per service workload: service / raw (samples/s), service / naive and / LitServe (requests/s)."""
    ok = measured(result)
    out = []
    for (server, body, rows, length, conc), r in ok.items():
        if not server.startswith("service"):  # the service and its variants (service-w2: 2 workers)
            continue
        key = raw_key(result["raw"], rows, length)
        raw = best_raw(result["raw"].get(key, {})) if key else None
        one_caller = result["raw"].get(key, {}).get("samples_per_s") if key else None
        naive = ok.get(("naive", body, rows, length, conc), {}).get("requests_per_s")
        lit = ok.get(("litserve", body, rows, length, conc), {}).get("requests_per_s")
        out.append({
            "server": server, "body": body, "rows": rows, "length": length, "concurrency": conc,
            "raw_case": key,
            "service_over_raw": _div(r["samples_per_s"], raw),
            "service_over_raw_one_caller": _div(r["samples_per_s"], one_caller),
            "service_over_naive": _div(r["requests_per_s"], naive),
            "service_over_litserve": _div(r["requests_per_s"], lit),
        })  # fmt: skip
    return out


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #5's targets, each with the measured value and whether this run met it."""
    rows = measured(result)
    ratio = {
        (q.get("server", "service"), q["body"], q["rows"], q["length"], q["concurrency"]): q
        for q in result["ratios"]
    }
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, value: float | None, ok: bool | None, shown: str) -> None:
        out.append({"workload": name, "target": target, "value": value, "met": ok, "shown": shown})

    for body, floor in (("npy", 0.95), ("json", 0.85)):
        v = ratio.get(("service", body, 64, 1024, 8), {}).get("service_over_raw")
        add(
            f"64×1024 {body}, concurrency 8",
            f"≥ {floor} × raw",
            v,
            None if v is None else v >= floor,
            times(v),
        )
    # Not the service holding a CPU latency request: the servers it is compared with hold none.
    # Nor a variant measured at concurrency 1 only (service-samecpu).
    compared = {
        k[0]
        for k in ratio
        if k[0] == "service" or (k[0].startswith("service-w") and (k[0], "json", 1, 1024, 32) in ratio)
    }
    for server in sorted(compared):
        q = ratio.get((server, "json", 1, 1024, 32), {})
        n, lit = q.get("service_over_naive"), q.get("service_over_litserve")
        met = None if n is None or lit is None else n >= 3 and lit >= 2
        label = "" if server == "service" else f" ({server})"
        add(f"1×1024 json, concurrency 32{label}", "≥ 3 × naive, ≥ 2 × LitServe", n, met,
            f"{times(n)} naive, {times(lit)} LitServe")  # fmt: skip
    for server in ["service", *latency_servers(rows), *same_cpu_servers(rows)]:
        one = rows.get((server, "json", 1, 1024, 1), {})
        # The stricter of the raw call timed while the server ran (the same machine state) and
        # the run's own.
        raw_p50 = min(r["latency_1x1024"]["p50_ms"] for r in (server_raw(result, server), result["raw"]))
        p50 = one.get("p50_ms")
        met = None if p50 is None else p50 <= raw_p50 + 0.5
        shown = f"{ms(p50)} ms (raw + {ms(_sub(p50, raw_p50))} ms)"
        floor = rows.get(("floor", "json", 1, 1024, 1), {}).get("p50_ms")
        if p50 is not None and floor is not None and server == "service":
            shown = f"{ms(p50)} ms (raw + {ms(p50 - raw_p50)} ms; the HTTP floor alone {ms(floor)} ms)"
        label = "" if server == "service" else f" ({server}: {variant_label(result, server)})"
        add(f"1×1024 json, concurrency 1{label}", f"p50 ≤ raw {raw_p50:.2f} + 0.5 ms", p50, met, shown)
    summary = side_by_side_summary(result)
    if summary is not None:
        n, lit, over = summary["over_naive"], summary["over_litserve"], summary["c1_over_raw_ms"]
        label = f"side by side, median of {summary['rounds']} rounds"
        met = None if n is None or lit is None else n >= 3 and lit >= 2
        add(f"1×1024 json, concurrency {summary['concurrency']}, {label}", "≥ 3 × naive, ≥ 2 × LitServe",
            n, met, f"{times(n)} naive, {times(lit)} LitServe")  # fmt: skip
        shown = f"raw + {ms(over)} ms ({ms(summary['c1_ms'])} ms, raw {ms(summary['raw_ms'])} ms)"
        add(f"1×1024 json, concurrency 1, {label}", "p50 ≤ raw + 0.5 ms (the round's raw call)", over,
            None if over is None else over <= 0.5, shown)  # fmt: skip
    big = [r for r in result["rows"] if r.get("status") == "ok" and "peak_rss_growth_mib" in r]
    if big:
        q = ratio.get(("service", "npy", 1, big[0]["length"], 1), {})
        v, growth = q.get("service_over_raw"), big[0]["peak_rss_growth_mib"]
        met = None if v is None else v >= 0.9 and growth * 2**20 <= 300e6
        add(f"1×{big[0]['length']:,} npy", "≥ 0.9 × raw, peak RSS growth ≤ 300 MB", v, met,
            f"{times(v)}, growth {growth:.0f} MiB")  # fmt: skip
    return out


def side_by_side_rounds(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per alternating round: each server's requests/s, the service's over naive's and LitServe's,
    its concurrency-1 p50 and the raw call's right after."""
    out = []
    for row in result.get("side_by_side", {}).get("rounds", []):
        rate = {name: row.get(name, {}).get("requests_per_s") for name in ("service", "naive", "litserve")}
        c1, raw = row["service-c1"]["p50_ms"], row["raw"]["p50_ms"]
        same_cpu = row.get("service-samecpu-c1", {}).get("p50_ms")
        out.append({
            **{f"{name}_requests_per_s": v for name, v in rate.items()},
            "over_naive": _div(rate["service"], rate["naive"]),
            "over_litserve": _div(rate["service"], rate["litserve"]),
            "c1_ms": c1, "raw_ms": raw, "c1_over_raw_ms": _sub(c1, raw),
            "c1_same_cpu_ms": same_cpu, "same_cpu_saved_ms": _sub(c1, same_cpu),
        })  # fmt: skip
    return out


def side_by_side_summary(result: dict[str, Any]) -> dict[str, Any] | None:
    """Medians over the alternating rounds (of each round's ratios and differences)."""
    rounds = side_by_side_rounds(result)
    if not rounds:
        return None

    keys = ("over_naive", "over_litserve", "c1_ms", "raw_ms", "c1_over_raw_ms")
    keys += ("c1_same_cpu_ms", "same_cpu_saved_ms")
    return {
        "rounds": len(rounds),
        "concurrency": result["side_by_side"]["concurrency"],
        **{k: median_known(r[k] for r in rounds) for k in keys},
    }


def side_by_side_lines(result: dict[str, Any]) -> list[str]:
    rounds, summary = side_by_side_rounds(result), side_by_side_summary(result)
    if summary is None:
        return []
    conc = summary["concurrency"]
    same_cpu = summary["c1_same_cpu_ms"] is not None
    reduced = ""
    if result["side_by_side"].get("reduced"):
        reduced = " Reduced: past the time budget, one short round."
    lines = [
        "",
        "## Side by side: alternating rounds",
        "",
        f"The service, the naive server and LitServe up at once; each round runs 1×1024 JSON at "
        f"concurrency {conc} on each in turn, then the service at concurrency 1"
        + (" and the service with the same-CPU hand-off (service-samecpu, up too)" if same_cpu else "")
        + f" and the raw call (back to back). Ratios and differences are taken within each round, then "
        f"the median.{reduced}",
        "",
        "| round | service req/s | naive req/s | LitServe req/s | service / naive | service / LitServe "
        "| service c1 p50 ms | raw p50 ms | service − raw ms |"
        + (" same-CPU c1 p50 ms | service − same-CPU ms |" if same_cpu else ""),
        "| --- " + "| ---: " * (10 if same_cpu else 8) + "|",
    ]
    for i, r in enumerate(rounds, 1):
        extra = f" {ms(r['c1_same_cpu_ms'])} | {ms(r['same_cpu_saved_ms'])} |" if same_cpu else ""
        lines.append(
            f"| {i} | {rate(r['service_requests_per_s'])} | {rate(r['naive_requests_per_s'])} "
            f"| {rate(r['litserve_requests_per_s'])} | {times(r['over_naive'])} "
            f"| {times(r['over_litserve'])} | {ms(r['c1_ms'])} | {ms(r['raw_ms'])} "
            f"| {ms(r['c1_over_raw_ms'])} |{extra}"
        )
    extra = f" {ms(summary['c1_same_cpu_ms'])} | {ms(summary['same_cpu_saved_ms'])} |" if same_cpu else ""
    lines.append(
        f"| median | | | | {times(summary['over_naive'])} | {times(summary['over_litserve'])} "
        f"| {ms(summary['c1_ms'])} | {ms(summary['raw_ms'])} | {ms(summary['c1_over_raw_ms'])} |{extra}"
    )
    return lines


def same_cpu_servers(rows: dict[tuple[str, str, int, int, int], dict[str, Any]]) -> list[str]:
    """The service with the same-CPU hand-off, if it was measured at concurrency 1."""
    return sorted({k[0] for k in rows if k[0] == "service-samecpu" and k[4] == 1})


def variant_label(result: dict[str, Any], server: str) -> str:
    if server == "service-samecpu":
        n = result["servers"].get(server, {}).get("settings", {}).get("SAME_CPU_MAX_SAMPLES")
        return f"SHAPE_DETECTOR_SAME_CPU_MAX_SAMPLES={n}, the same-CPU hand-off"
    return cpu_latency_label(result, server)


def latency_servers(rows: dict[tuple[str, str, int, int, int], dict[str, Any]]) -> list[str]:
    """The service variants holding a CPU latency request that were measured at concurrency 1."""
    return sorted({k[0] for k in rows if k[0].startswith("service-lat") and k[4] == 1})


def server_raw(result: dict[str, Any], server: str) -> dict[str, Any]:
    """The raw call's latencies timed while ``server`` ran, if any (the service holding a CPU
    latency request), else the run's."""
    raw: dict[str, Any] = result["servers"].get(server, {}).get("raw") or result["raw"]
    return raw


def cpu_latency_label(result: dict[str, Any], server: str) -> str:
    info = result["servers"].get(server, {})
    held = info.get("cpu_latency_limit_us")
    return f"a CPU latency request of {info.get('settings', {}).get('CPU_LATENCY_US')} µs" + (
        "" if held is None else f", the machine's limit {held} µs while it ran"
    )


def concurrency_one(result: dict[str, Any]) -> list[str]:
    """What a request at concurrency 1 costs on this machine before the service does any work."""
    rows = measured(result)
    floor = rows.get(("floor", "json", 1, 1024, 1), {})
    service = rows.get(("service", "json", 1, 1024, 1), {})
    raw = result["raw"]["latency_1x1024"]
    paced = result["raw"].get("latency_1x1024_paced")
    wake = result.get("wakeups")
    if not floor and paced is None and wake is None:
        return []
    lines = [
        "",
        "## Concurrency 1: what this machine charges before the service's own work",
        "",
        "| 1×1024 | p50 ms |",
        "| --- | ---: |",
        f"| raw onnxruntime call, back to back | {ms(raw['p50_ms'])} |",
    ]
    if paced is not None:
        lines.append(
            f"| raw onnxruntime call after a {paced['pause_ms']:.1f} ms pause (an inference thread's "
            f"pace at concurrency 1) | {ms(paced['p50_ms'])} |"
        )
    if floor:
        lines.append(
            f"| floor: uvicorn and a bare ASGI app that reads the JSON body and sends a fixed answer, "
            f"concurrency 1 | {ms(floor['p50_ms'])} |"
        )
    if service:
        lines.append(f"| the service, concurrency 1 | {ms(service['p50_ms'])} |")
        if floor:
            own = _sub(_sub(service["p50_ms"], floor["p50_ms"]), raw["p50_ms"])
            lines.append(f"| the service's own share: service − floor − raw back to back | {ms(own)} |")
    for server in latency_servers(rows):
        held = server_raw(result, server)
        lines += [
            f"| {server} ({cpu_latency_label(result, server)}): raw onnxruntime call back to back, "
            f"timed while it held the request | {ms(held['latency_1x1024']['p50_ms'])} |",
            f"| {server}: raw onnxruntime call after a {held['latency_1x1024_paced']['pause_ms']:.1f} ms "
            f"pause, the same | {ms(held['latency_1x1024_paced']['p50_ms'])} |",
            f"| {server}, concurrency 1 | {ms(rows[(server, 'json', 1, 1024, 1)]['p50_ms'])} |",
        ]
    if wake is not None:
        two = wake.get("two_cpus_round_trip_us")
        between = "" if two is None else f", {two:.1f} µs between two CPUs"
        lines += [
            "",
            f"Waking a blocked thread (benchmarks/wakeup.py, {wake['trips']} round trips through pipes): "
            f"a round trip takes {wake['same_cpu_round_trip_us']:.1f} µs between two threads on one CPU"
            f"{between}. A request at concurrency 1 wakes a blocked thread four times: the event loop "
            "(the request), the inference thread (the queued request), the event loop (the answer) and "
            "the client (the response); the floor server's requests wake two.",
        ]
    return lines


def rate(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    return f"{x / 1e3:.1f} k" if x >= 1e4 else f"{x:.1f}"


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}" if x < 10 else f"{x:.0f}"


def times(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def shape(rows: int, length: int) -> str:
    return f"{rows}×{length:,}"


def row_line(r: dict[str, Any]) -> str:
    """One workload on one line (progress output)."""
    head = f"{r['server']} {r['body']} {shape(r['rows'], r['length'])} c{r['concurrency']}"
    return (
        f"{head}: {rate(r['requests_per_s'])} req/s, {rate(r['samples_per_s'])} samples/s, "
        f"p50 {ms(r['p50_ms'])} ms, p99 {ms(r['p99_ms'])} ms, {r['errors']} errors, "
        f"peak RSS {r['server_peak_rss_mib']:.0f} MiB"
    )


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    v = m["versions"]
    la0, la1 = result["load_average_start"], result.get("load_average_end", ["?"])
    lines = [
        f"# Benchmarks: model {result['model']['name']} {result['model']['version']}",
        "",
        f"- command: `{result.get('command', 'python -m benchmarks.run')}`"
        + (" (quick: short phases, one repeat)" if result.get("quick") else ""),
        f"- started {result['started']}, took {result.get('elapsed_s', 0):.0f} s; git {m['git_commit']}"
        + (f" with uncommitted changes in {', '.join(dirty)}" if (dirty := m["uncommitted"]) else ""),
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['memory_gib']} GiB, "
        f"{m['os']}, Python {m['python']}",
        "- " + ", ".join(f"{name} {version}" for name, version in v.items()),
        f"- load average at start {la0[0]:.2f}, at end {la1[0]:.2f} (other work on the machine skews "
        "every number; see the 'other CPU' column)",
        f"- load generator: {result['load_generator']['client']}, {result['load_generator']['how']}",
        "",
        "## Raw onnxruntime (in process, the service's session options)",
        "",
        f"One caller, and {result['raw'].get('callers', '–')} callers sharing the session (one per "
        "usable CPU, as the service's inference workers call it); the service's ratios to raw are "
        "taken against the better of the two.",
        "",
        "| input | samples/s, one caller | samples/s, a caller per CPU | onnxruntime calls | batch shapes |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    raw = result["raw"]
    for key in ("1x1024", "64x1024", raw["long_case"]):
        c = raw[key]
        note = " (the service's windows)" if key == raw["long_case"] else ""
        shapes = ", ".join(c["batch_shapes"])
        parallel = c.get("samples_per_s_parallel")
        lines.append(
            f"| {key}{note} | {rate(c['samples_per_s'])} | {rate(parallel) if parallel else '–'} "
            f"| {c['calls_per_pass']} | {shapes} |"
        )
    lat = raw["latency_1x1024"]
    lines += [
        "",
        f"Single-call latency 1×1024 over {lat['calls']} calls: median {ms(lat['p50_ms'])} ms, "
        f"p99 {ms(lat['p99_ms'])} ms. Window {raw['window']}, max batch samples {raw['max_batch_samples']}, "
        f"intra-op threads {raw['intra_op_threads'] or 'default'}.",
        "",
        "## Servers",
        "",
        "Medians over the repeats; errors are totals (warm-up included). Peak RSS: VmHWM summed over the "
        "server's processes, reset before each workload. CPU columns are cores busy on average "
        "(server process tree, this load generator, everything else on the machine).",
        "",
        "| server | body | shape | conc. | req/s | samples/s | p50 ms | p99 ms | errors | peak RSS MiB "
        "| server CPU | client CPU | other CPU |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        head = f"| {r['server']} | {r['body']} | {shape(r['rows'], r['length'])} | {r['concurrency']} |"
        if r.get("status") != "ok":
            lines.append(f"{head} n/a | n/a | n/a | n/a | – | – | – | – | – |")
            continue
        flag = " (reduced)" if r.get("reduced") else ""
        lines.append(
            f"{head} {rate(r['requests_per_s'])}{flag} | {rate(r['samples_per_s'])} | {ms(r['p50_ms'])} "
            f"| {ms(r['p99_ms'])} | {r['errors']} | {r['server_peak_rss_mib']:.0f} "
            f"| {r['server_cpu_cores']:.2f} | {r['client_cpu_cores_overall']:.2f} "
            f"| {r['other_cpu_cores']:.2f} |"
        )
    big = [r for r in result["rows"] if r.get("status") == "ok" and "peak_rss_growth_mib" in r]
    if big:
        b = big[0]
        lines += [
            "",
            f"Long signal, service, {shape(b['rows'], b['length'])} .npy ({b['body_mib']:.0f} MiB body), "
            f"{len(b['latencies_ms'])} request(s) one at a time: latencies "
            f"{', '.join(ms(x) for x in b['latencies_ms'])} ms; RSS before {b['rss_before_mib']:.0f} MiB, "
            f"peak during {b['server_peak_rss_mib']:.0f} MiB: growth {b['peak_rss_growth_mib']:.0f} MiB"
            + ("" if b["peak_reset"] else " (peak since server start: clear_refs unavailable)")
            + ".",
        ]
    lines += [
        "",
        "## Ratios",
        "",
        "Service / raw onnxruntime compares samples/s with the raw case doing the same inference, "
        "the better of one caller and one per CPU (1×1024 raw is one call per signal: under "
        "concurrency the service batches requests together and can exceed it); in brackets, "
        "against one caller. Service / naive and service / LitServe compare requests/s "
        "on the same workload (they take JSON only). service-w<n> is the service with "
        "SHAPE_DETECTOR_WORKERS=<n> (n processes); service-lat<n> the service with "
        "SHAPE_DETECTOR_CPU_LATENCY_US=<n> (it holds a CPU latency request of n µs while it runs; "
        "the naive server and LitServe hold none, so its ratios to them are not like for like); "
        "service-samecpu the service with SHAPE_DETECTOR_SAME_CPU_MAX_SAMPLES set (at low load its "
        "event loop and inference thread pinned to one CPU).",
        "",
        "| service | body | shape | conc. | service / raw | service / naive | service / LitServe |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for q in result.get("ratios", []):
        lines.append(
            f"| {q.get('server', 'service')} | {q['body']} | {shape(q['rows'], q['length'])} | "
            f"{q['concurrency']} | "
            f"{times(q['service_over_raw'])}"
            + (
                f" ({times(q['service_over_raw_one_caller'])})"
                if q.get("service_over_raw_one_caller")
                else ""
            )
            + f" | {times(q['service_over_naive'])} | "
            f"{times(q['service_over_litserve'])} |"
        )
    lines += concurrency_one(result)
    lines += side_by_side_lines(result)
    lines += [
        "",
        "## Targets (issue #5)",
        "",
        "| workload | target | this run | met |",
        "| --- | --- | --- | --- |",
    ]
    for t in targets(result):
        met = "–" if t["met"] is None else "yes" if t["met"] else "no"
        lines.append(f"| {t['workload']} | {t['target']} | {t['shown']} | {met} |")
    lines += ["", "## Servers as run", ""]
    for name, s in result["servers"].items():
        command = " ".join(["python", *s["command"][1:]])
        lines.append(
            f"- {name}: `{command}`, POST {s['detect_path']}, ready in {s['startup_s']:.1f} s, "
            f"idle RSS {s['idle_rss_mib']:.0f} MiB, exit code {s.get('exit_code')}; "
            f"settings {json.dumps(s['settings'])}"
        )
    problems = [f"{r['server']} {r['body']} {shape(r['rows'], r['length'])} c{r['concurrency']}: {e}"
                for r in result["rows"] for e in r.get("error_examples", [])]  # fmt: skip
    if result.get("not_run"):
        lines += ["", "## Not run", ""] + [f"- {n}" for n in result["not_run"]]
    if result["failures"] or problems:
        lines += ["", "## Errors", ""] + [f"- {p}" for p in result["failures"] + problems]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """``<stem>.json`` and ``<stem>.md`` in ``out_dir``, each written to a .tmp file and renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    texts = {".json": json.dumps(result, indent=2, default=str) + "\n", ".md": markdown(result)}
    for suffix, text in texts.items():
        path = out_dir / f"{stem}{suffix}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        paths.append(path)
    return paths
