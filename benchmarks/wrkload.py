"""Closed-loop HTTP load from ``wrk`` (Debian's package; C, one thread, epoll), driven from here.

A Python client shares the 2 cores with the server and spends about 0.3 ms of CPU per request
of its own; wrk spends a few microseconds. Each phase is one wrk process: ``concurrency``
keep-alive connections, each sending the next request as soon as the previous answer arrived,
the body read from a file (``benchmarks/load.lua``). Throughput is counted over a window that
starts ``lead`` seconds after wrk starts and ends ``tail`` seconds before it is stopped, so the
pipeline is full at both ends (no answer still in flight at the end is lost from the count);
latency percentiles are wrk's over the whole phase. Every response is checked in the Lua
script: status 200, and byte-identical to an answer checked in full by the harness's Python
client (``loadgen.checked_requests`` before and after each workload), or one ``"peaks"`` entry
per signal sent (an Open Inference Protocol answer: one ``"probability"`` output). Client CPU
is wrk's own (rusage of the reaped child).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.loadgen import MAX_EXAMPLES, Payload, Phase, PhaseResult

SCRIPT = Path(__file__).with_name("load.lua")
LEAD_S = 0.25  # unmeasured start of each phase (connections open, first batches form)
TAIL_S = 0.15  # measured window ends this long before wrk is stopped (wrk stops within 0.1 s)


def executable() -> str | None:
    """Path of ``wrk`` (PATH or /usr/bin), or None."""
    return shutil.which("wrk") or ("/usr/bin/wrk" if os.access("/usr/bin/wrk", os.X_OK) else None)


def version() -> str:
    exe = executable()
    if exe is None:
        return "wrk (not installed)"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "wrk"


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def parse_output(stdout: str) -> tuple[dict[str, float], str]:
    """The JSON line and the first problem that ``load.lua``'s done() prints."""
    stats: dict[str, float] | None = None
    example = ""
    for line in stdout.splitlines():
        if line.startswith('{"responses"'):
            stats = json.loads(line)
        elif line.startswith("example: "):
            example = line.removeprefix("example: ").strip()
    if stats is None:
        raise RuntimeError(f"wrk printed no result line:\n{stdout[-2000:]}")
    return stats, example


def run_phase(
    url: str,
    body_file: Path,
    payload: Payload,
    concurrency: int,
    duration: float,
    timeout: float,
    expected_file: Path | None = None,
    lead: float = LEAD_S,
    tail: float = TAIL_S,
    measured: bool = True,
) -> PhaseResult:
    """One wrk run: ``lead`` s unmeasured, ``duration`` s counted, ``tail`` s, then SIGINT.

    A measured phase without any answer in its window is an error (the phase was too short
    for the workload's latency); a warm-up (``measured=False``) only needs correct answers.
    """
    exe = executable()
    if exe is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (make bench installs it)")
    out = PhaseResult()
    if duration <= 0:
        return out
    start = time.monotonic()
    window = (start + lead, start + lead + duration)
    command = [
        exe, "-t1", f"-c{concurrency}", "-d3600s", "--timeout", f"{max(1, round(timeout))}s",
        "-s", str(SCRIPT), url, "--", str(body_file), payload.content_type, str(payload.signals),
        f"{window[0]:.6f}", f"{window[1]:.6f}", str(expected_file or ""), *map(str, payload.needle),
    ]  # fmt: skip
    cpu0 = _children_cpu_s()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(max(0.0, window[1] + tail - time.monotonic()))
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=timeout + 30)
    except BaseException:
        process.kill()
        process.wait()
        raise
    wall = time.monotonic() - start
    out.client_cpu_s = _children_cpu_s() - cpu0
    out.client_wall_s = wall
    try:
        stats, example = parse_output(stdout)
    except RuntimeError as exc:
        out.errors = 1
        out.error_examples = [f"{exc}\n{stderr[-1000:]}"]
        return out
    out.requests = int(stats["in_window"])
    out.elapsed_s = duration
    failures = ("bad", "connect_errors", "read_errors", "write_errors", "timeouts")
    out.errors = int(sum(stats[k] for k in failures))
    if example:
        out.error_examples.append(example)
    elif out.errors:
        out.error_examples.append(
            f"wrk: {stats['connect_errors']} connect, {stats['read_errors']} read, "
            f"{stats['write_errors']} write errors, {stats['timeouts']} timeouts"
        )
    out.percentiles_ms = (stats["p50_us"] / 1000, stats["p99_us"] / 1000)
    out.responses = int(stats["responses"])
    out.identical = int(stats["identical"])
    if measured and stats["in_window"] == 0:
        out.errors += 1
        out.error_examples.append(f"no answer inside the {duration:.2f} s window: phase too short")
    out.error_examples = out.error_examples[:MAX_EXAMPLES]
    return out


def run_load(
    url: str,
    payload: Payload,
    concurrency: int,
    phases: Sequence[Phase],
    timeout: float = 120.0,
    expected: bytes | None = None,
    cycle: float = 0.0,
) -> list[PhaseResult]:
    """Like ``loadgen.run_load`` (duration phases only): one wrk process per phase.

    ``cycle`` (seconds) estimates the time for every connection to get one answer (for
    example ``concurrency`` times one request's latency): the measured phases (all but the
    first, the warm-up) start counting after at least one cycle and count for at least two,
    so slow workloads still get whole cycles in their window.
    """
    if any(p.max_requests is not None for p in phases):
        raise ValueError("wrk runs phases by duration only: use loadgen for counted requests")
    with tempfile.TemporaryDirectory(prefix="shape-wrk-") as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(payload.body)
        expected_file = None
        if expected is not None:
            expected_file = Path(tmp) / "expected"
            expected_file.write_bytes(expected)
        results = []
        for i, phase in enumerate(phases):
            duration, lead, measured = phase.duration, LEAD_S, i > 0
            if measured and duration > 0:
                duration, lead = max(duration, 2 * cycle), max(lead, cycle)
            results.append(
                run_phase(
                    url,
                    body_file,
                    payload,
                    concurrency,
                    duration,
                    timeout,
                    expected_file,
                    lead,
                    measured=measured,
                )
            )
        return results
