"""The per-request breakdown runs the real application in-process and accounts for its time."""

from __future__ import annotations

import pytest

from benchmarks import breakdown

pytestmark = pytest.mark.slow


def test_breakdown_accounts_for_each_path(capsys: pytest.CaptureFixture[str]) -> None:
    results = breakdown.main(["--requests", "20"])
    assert results["raw call (tight loop)"] > 0
    for path in ("batcher", "inline"):
        r = results[path]
        stages = sum(r[s] for s in breakdown.STAGES)
        assert all(r[s] > 0 for s in breakdown.STAGES), r
        # Each part is a median of its own, so the parts need not add up exactly; they must
        # not exceed the whole by much, and the whole must be more than the inference.
        assert r["onnxruntime"] < r["application"]
        assert stages < 1.5 * r["application"]
    # The inline path did score on the event loop, and the default path did not.
    assert results["scored on the event loop"] == {"batcher": 0, "inline": 20}
    out = capsys.readouterr().out
    assert "framework and middleware" in out and "inline" in out


def test_the_probe_restores_what_it_wrapped() -> None:
    before = (breakdown.deps.decode_request, breakdown.deps.respond_many, breakdown.OnnxModel.run)
    with breakdown.Probe():
        assert breakdown.deps.decode_request is not before[0]
    assert (breakdown.deps.decode_request, breakdown.deps.respond_many, breakdown.OnnxModel.run) == before
