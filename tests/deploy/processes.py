"""Real service processes for the deployment tests: start, wait until ready, stop with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_environ() -> dict[str, str]:
    """This process's environment without what would leak into a started service: the test
    venv's activation and PYTHONPATH, and any SHAPE_DETECTOR_* setting of the developer's."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SHAPE_DETECTOR_")}


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"service not ready on {self.url} within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as docker stop and Kubernetes send it; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def start_service(command: list[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> Service:
    """Start `command` (it reads SHAPE_DETECTOR_HOST/PORT from `env`); does not wait."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    host = env["SHAPE_DETECTOR_HOST"]
    url = f"http://{f'[{host}]' if ':' in host else host}:{env['SHAPE_DETECTOR_PORT']}"
    return Service(process, url, log_path)


def start_repo_service(tmp_path: Path, name: str, host: str = "127.0.0.1") -> Service:
    """`python -m app` from the repository, serving its models/, on a free port of `host`."""
    env = {
        **clean_environ(),
        "SHAPE_DETECTOR_HOST": host,
        "SHAPE_DETECTOR_PORT": str(free_port()),
        "SHAPE_DETECTOR_MODEL_DIR": str(ROOT / "models"),
    }
    return start_service([sys.executable, "-m", "app"], cwd=ROOT, env=env, log_path=tmp_path / f"{name}.log")
