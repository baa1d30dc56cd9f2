"""The service as users run it: a real uvicorn process on a real port."""

import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from tests.api.test_primer_figure import primer_signal
from tests.integration.conftest import ROOT, start_server


def test_serve_detect_and_stop_cleanly(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        r = httpx.post(
            f"{server.url}/v1/detect",
            json={"signals": [primer_signal(1).tolist()]},
            headers={"X-Request-ID": "it-1"},
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "it-1"
        peaks = [p["index"] for p in r.json()["results"][0]["peaks"]]
        assert len(peaks) == 2 and abs(peaks[0] - 35) <= 2 and abs(peaks[1] - 255) <= 2
        buf = io.BytesIO()
        np.save(buf, np.stack([primer_signal(2), primer_signal(3)]).astype(np.float32))
        r = httpx.post(
            f"{server.url}/v1/models/bump/detect",
            content=buf.getvalue(),
            headers={"Content-Type": "application/x-npy"},
        )
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        assert "shape_detector_requests_total" in httpx.get(f"{server.url}/metrics").text
    finally:
        code = server.stop()
    assert code == 0, server.log()
    log = server.log()
    assert '"request_id": "it-1"' in log and '"status": 200' in log


def test_invalid_setting_stops_startup_with_a_message() -> None:
    env = {
        "SHAPE_DETECTOR_MAX_SIGNALS": "-5",
        "SHAPE_DETECTOR_MODEL_DIR": str(ROOT / "models"),
        "PATH": "/usr/bin:/bin",
    }
    r = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert "SHAPE_DETECTOR_MAX_SIGNALS='-5'" in r.stderr
