"""The primer's own figure, through the API with the shipped model."""

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import load_settings
from tests.api.conftest import wait_ready
from training.evaluate import matched_filter
from training.scenario import BUMP, bump

SHIPPED = Path(__file__).resolve().parents[2] / "models"


def primer_signal(seed: int) -> np.ndarray:
    """300 samples: events centred at t = 35 and t = 255 (SNR ~ 9) and a spike at t = 150."""
    rng = np.random.default_rng(seed)
    t = np.arange(300, dtype=np.float64)
    x = rng.standard_normal(300)
    for c in (35, 255):
        s = t - c
        x += 4.0 * bump(s) * (np.abs(s) <= 20)
    x[150] += 12.0  # three times the events' height
    return x


def test_two_events_and_a_spike() -> None:
    settings = load_settings(MODEL_DIR=SHIPPED)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        signals = [primer_signal(seed).tolist() for seed in range(5)]
        r = client.post("/v1/detect", json={"signals": signals})
        assert r.status_code == 200
        for res in r.json()["results"]:
            assert res["detected"] is True
            peaks = [p["index"] for p in res["peaks"]]
            assert len(peaks) == 2, peaks
            assert abs(peaks[0] - 35) <= 2 and abs(peaks[1] - 255) <= 2
            assert all(abs(p - 150) > 20 for p in peaks)
    # Where the spike competes with the events in the matched filter's output.
    mf = matched_filter(primer_signal(0), BUMP)
    assert mf[140:161].max() > 0.5 * mf[25:46].max()
