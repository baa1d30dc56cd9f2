"""A real server process, started the way `make serve` starts it (python -m app)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.server import IMPORT_PATH as HTTP_PROTOCOL

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def start_server(
    tmp_path: Path, env: dict[str, str] | None = None, timeout: float = 60.0, factory: str | None = None
) -> Server:
    """``python -m app``; with ``factory`` (``module:function``, an app factory), uvicorn serving
    that app instead, with the service's HTTP protocol (as ``python -m app`` serves it)."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    full_env = {
        **os.environ,
        "SHAPE_DETECTOR_HOST": "127.0.0.1",
        "SHAPE_DETECTOR_PORT": str(port),
        "SHAPE_DETECTOR_MODEL_DIR": str(ROOT / "models"),
        **(env or {}),
    }
    command = [sys.executable, "-m", "app"]
    if factory is not None:
        command = [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1"]
        command += ["--port", str(port), "--http", HTTP_PROTOCOL, "--no-access-log", "--no-server-header"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"server not ready in {timeout} s:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("server"))
    yield s
    s.stop()
