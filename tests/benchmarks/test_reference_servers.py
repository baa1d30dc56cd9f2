"""The naive and LitServe reference servers keep the service's contract and find the same peaks.

All three run as real processes on free loopback ports, started by the harness's own helpers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.api.schemas import DetectResponse
from app.core.card import load_card
from benchmarks import servers
from benchmarks.loadgen import make_signals

pytestmark = pytest.mark.slow

MODEL_DIR = servers.ROOT / "models" / "bump"
SPECS = {
    "service": lambda port: servers.service_spec(MODEL_DIR, port),
    "naive": lambda port: servers.naive_spec(MODEL_DIR, port),
    "litserve": lambda port: servers.litserve_spec(MODEL_DIR, port),
}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, servers.Server]]:
    log_dir = Path(tmp_path_factory.mktemp("bench-servers"))
    up: dict[str, servers.Server] = {}
    try:
        for name, make in SPECS.items():
            port = servers.free_port()
            up[name] = servers.start(make(port), port, log_dir, timeout=60)
        yield up
    finally:
        for server in up.values():
            server.stop()


def post(server: servers.Server, body: dict[str, object]) -> httpx.Response:
    return httpx.post(server.detect_url, json=body, timeout=60)


def signal_sets() -> list[dict[str, object]]:
    template = load_card(MODEL_DIR).template
    mixed = [make_signals(1, n, template, seed=n)[0].tolist() for n in (300, 1024, 4000)]
    equal = make_signals(3, 2048, template, seed=7).tolist()  # LitServe runs these in one call
    return [
        {"signals": mixed},
        {"signals": equal, "threshold": 0.5, "min_distance": 20},
        {"signals": mixed[:1], "return_scores": True},
    ]


@pytest.mark.parametrize("body", signal_sets(), ids=["mixed-lengths", "options", "scores"])
@pytest.mark.parametrize("other", ["naive", "litserve"])
def test_same_contract_and_peaks_as_the_service(
    running: dict[str, servers.Server], other: str, body: dict[str, object]
) -> None:
    want = post(running["service"], body)
    got = post(running[other], body)
    assert want.status_code == 200, want.text
    assert got.status_code == 200, got.text
    ref, doc = DetectResponse.model_validate(want.json()), DetectResponse.model_validate(got.json())
    assert set(got.json()) == set(want.json())
    assert (doc.model, doc.threshold, doc.min_distance) == (ref.model, ref.threshold, ref.min_distance)
    assert len(doc.results) == len(ref.results) == len(body["signals"])  # type: ignore[arg-type]
    found = 0
    for a, b in zip(ref.results, doc.results, strict=True):
        assert b.detected == a.detected
        assert b.probability == pytest.approx(a.probability, abs=1e-5)
        assert [q.index for q in b.peaks] == [p.index for p in a.peaks]
        assert [q.probability for q in b.peaks] == pytest.approx([p.probability for p in a.peaks], abs=1e-5)
        found += len(a.peaks)
        if body.get("return_scores"):
            assert a.scores is not None and b.scores is not None
            np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
        else:
            assert b.scores is None
    assert found > 0  # the signals hold the shape: the comparison is not vacuous


@pytest.mark.parametrize("other", ["naive", "litserve"])
def test_too_short_signal_is_a_client_error(running: dict[str, servers.Server], other: str) -> None:
    response = post(running[other], {"signals": [[0.0, 1.0, 0.0]]})
    assert response.status_code == 422, response.text
