"""Start, watch and stop the servers under test as real processes on free loopback ports.

Memory and CPU are read from /proc for the server's whole process tree (LitServe runs
several processes; the service with one uvicorn worker is a single process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from app.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


class ServerError(RuntimeError):
    """A server that did not start, or died."""


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: list[str]
    env: dict[str, str]
    ready_path: str
    detect_path: str
    accepts_npy: bool
    settings: dict[str, object] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_settings(
    model: Path,
    port: int = 8000,
    workers: int = 1,
    intra_op_threads: int = 0,
    cpu_latency_us: int | None = None,
    same_cpu_max_samples: int | None = None,
) -> Settings:
    """The service's settings for serving ``model`` (its other settings from SHAPE_DETECTOR_* or defaults)."""
    return load_settings(
        HOST="127.0.0.1",
        PORT=port,
        WORKERS=workers,
        MODEL_DIR=model.parent,
        DEFAULT_MODEL=model.name,
        INTRA_OP_THREADS=intra_op_threads,
        CPU_LATENCY_US=cpu_latency_us,
        **({} if same_cpu_max_samples is None else {"SAME_CPU_MAX_SAMPLES": same_cpu_max_samples}),
    )


def service_spec(
    model: Path,
    port: int,
    workers: int = 1,
    intra_op_threads: int = 0,
    cpu_latency_us: int | None = None,
    same_cpu_max_samples: int | None = None,
) -> ServerSpec:
    """The real service, started like ``make serve`` (python -m app), serving the models beside ``model``."""
    settings = service_settings(model, port, workers, intra_op_threads, cpu_latency_us, same_cpu_max_samples)
    keys = ["HOST", "PORT", "WORKERS", "MODEL_DIR", "DEFAULT_MODEL", "INTRA_OP_THREADS"]
    if cpu_latency_us is not None:
        keys.append("CPU_LATENCY_US")
    if same_cpu_max_samples is not None:
        keys.append("SAME_CPU_MAX_SAMPLES")
    env = {f"{ENV_PREFIX}{key}": str(getattr(settings, key)) for key in keys}
    effective = settings.model_dump(mode="json")
    return ServerSpec("service", [sys.executable, "-m", "app"], env, "/readyz", "/v1/detect", True, effective)


def naive_spec(model_dir: Path, port: int, intra_op_threads: int = 0) -> ServerSpec:
    args = ["--port", str(port), "--model-dir", str(model_dir), "--intra-op-threads", str(intra_op_threads)]
    cmd = [sys.executable, "-m", "benchmarks.naive_server", *args]
    settings = {"workers": 1, "intra_op_threads": intra_op_threads, "model_dir": str(model_dir)}
    return ServerSpec("naive", cmd, {}, "/readyz", "/v1/detect", False, settings)


def litserve_spec(model_dir: Path, port: int, intra_op_threads: int = 0) -> ServerSpec:
    args = ["--port", str(port), "--model-dir", str(model_dir), "--intra-op-threads", str(intra_op_threads)]
    cmd = [sys.executable, "-m", "benchmarks.litserve_server", *args]
    settings = {
        "workers_per_device": 1,
        "num_api_servers": 1,
        "max_batch_size": 1,
        "intra_op_threads": intra_op_threads,
        "model_dir": str(model_dir),
    }
    return ServerSpec("litserve", cmd, {}, "/health", "/predict", False, settings)


def floor_spec(port: int) -> ServerSpec:
    """The HTTP floor: a bare ASGI app under uvicorn that reads the body and sends a fixed answer."""
    cmd = [sys.executable, "-m", "benchmarks.floor_server", "--port", str(port)]
    return ServerSpec("floor", cmd, {}, "/readyz", "/v1/detect", False, {"workers": 1})


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


@dataclass
class Server:
    spec: ServerSpec
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    startup_s: float = 0.0

    @property
    def detect_url(self) -> str:
        return self.url + self.spec.detect_path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def memory_mib(self) -> dict[str, float]:
        """Resident and peak resident memory (VmRSS, VmHWM) summed over the process tree, MiB."""
        pids = process_tree(self.process.pid)
        rss = sum(_status_kib(p, "VmRSS") for p in pids)
        hwm = sum(_status_kib(p, "VmHWM") for p in pids)
        return {"rss_mib": rss / 1024, "peak_rss_mib": hwm / 1024, "processes": len(pids)}

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS in every process of the tree (Linux clear_refs 5)."""
        ok = True
        for p in process_tree(self.process.pid):
            try:
                Path(f"/proc/{p}/clear_refs").write_text("5")
            except OSError:
                ok = False
        return ok

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the live processes of the tree."""
        return sum(_cpu_ticks(p) for p in process_tree(self.process.pid)) / CLOCK_TICKS

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL to the server's own process group if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        # The server runs in its own session: its process group holds only what it started.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if code is None:
            code = self.process.wait(timeout=10)
        return code


def start(spec: ServerSpec, port: int, log_dir: Path, timeout: float = 120.0, processes: int = 1) -> Server:
    """Start ``spec`` from the repository root and wait until its ready path answers 200.

    With several server ``processes`` on one port, each answers only for itself: the ready
    path must answer 200 on 10 new connections per process in a row.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}-{port}.log"
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            spec.command,
            cwd=ROOT,
            env={**os.environ, **spec.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(spec, process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    in_a_row = 0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()
            code = process.returncode
            raise ServerError(f"{spec.name} exited with {code} before it was ready:\n{server.log()}")
        try:
            with _LOCAL.open(server.url + spec.ready_path, timeout=2) as resp:
                if resp.status == 200:
                    in_a_row += 1
                    if in_a_row >= (1 if processes == 1 else 10 * processes):
                        server.startup_s = time.perf_counter() - started
                        return server
                    continue
        except (urllib.error.URLError, OSError):
            pass
        in_a_row = 0
        time.sleep(0.2)
    server.stop()
    raise ServerError(f"{spec.name} not ready after {timeout:.0f} s:\n{server.log()}")
