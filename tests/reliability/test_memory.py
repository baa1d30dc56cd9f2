"""The bounds docker-compose.yml and the Kubernetes manifests set hold a burst of the largest
requests within their memory limit: a real server with compose's settings, 40 concurrent
requests of the largest body compose allows, its resident memory sampled throughout.

A burst takes 10-20 s: under `make soak` (marker ``soak``), not `make test`.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.integration.conftest import ROOT, start_server

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]
UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
LIMIT = (
    int(COMPOSE["deploy"]["resources"]["limits"]["memory"][:-1])
    * UNITS[COMPOSE["deploy"]["resources"]["limits"]["memory"][-1]]
)
CLIENTS = 40


def largest_body(kind: str) -> tuple[bytes, str]:
    """The largest body compose lets in (MAX_BODY_BYTES, MAX_SAMPLES), as ``kind``."""
    env = COMPOSE["environment"]
    most_bytes, most_samples = (
        int(env["SHAPE_DETECTOR_MAX_BODY_BYTES"]),
        int(env["SHAPE_DETECTOR_MAX_SAMPLES"]),
    )
    rng = np.random.default_rng(0)
    if kind == "npy":  # float64: 8 bytes per sample, the most the body limit allows
        buffer = io.BytesIO()
        np.save(buffer, rng.standard_normal(min(most_samples, most_bytes // 8) - 100))
        return buffer.getvalue(), "application/x-npy"
    # 8 bytes per number with its comma: as many samples as both limits allow
    count = min(most_samples, most_bytes // 8) - 1000
    text = ",".join(f"{v:.4f}" for v in np.round(rng.uniform(1.0, 9.0, count), 4))
    extra = ',"threshold":0.5' if kind == "json" else ',"threshold":0.5,"note":"x"'  # general: refused
    body = ('{"signals":[[' + text + "]]" + extra + "}").encode()
    assert len(body) <= most_bytes
    return body, "application/json"


@pytest.mark.soak
@pytest.mark.parametrize(("kind", "answered"), [("json", 200), ("general-json", 422), ("npy", 200)])
def test_compose_bounds_hold_a_burst_of_the_largest_requests(
    tmp_path: Path, kind: str, answered: int
) -> None:
    body, content_type = largest_body(kind)
    env = {k: str(v) for k, v in COMPOSE["environment"].items()} | {"SHAPE_DETECTOR_LOG_LEVEL": "warning"}
    server = start_server(tmp_path, env=env)
    status_file = Path(f"/proc/{server.process.pid}/status")

    def rss() -> int:
        return int(status_file.read_text().split("VmRSS:")[1].split()[0]) * 1024

    peak, done = [rss()], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    def post(_: int) -> int:
        r = httpx.post(
            f"{server.url}/v1/detect", content=body, headers={"Content-Type": content_type}, timeout=300
        )
        return r.status_code

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            statuses = list(pool.map(post, range(CLIENTS)))
    finally:
        done.set()
        watcher.join()
        assert server.stop() == 0, server.log()
    print(f"{kind}: peak RSS {peak[0] / 2**20:.0f} MiB of {LIMIT / 2**20:.0f}; {sorted(statuses)}")
    assert set(statuses) <= {answered, 503} and answered in statuses, statuses
    # The kernel kills a container at its limit, and every request in flight with it.
    assert peak[0] < 0.9 * LIMIT, f"peak RSS {peak[0] / 2**20:.0f} MiB, limit {LIMIT / 2**20:.0f} MiB"
