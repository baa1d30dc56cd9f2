"""The peak-picking benchmark: both variants measured on every case, and they must agree."""

from __future__ import annotations

import math

import pytest

from app.core import peaks as peaks_module
from benchmarks import peaks
from benchmarks.servers import ROOT


def test_every_case_and_stage_is_measured_for_both_variants() -> None:
    result = peaks.measure(ROOT / "models" / "bump", length=200_000, repeats=1)
    rows = result["rows"]
    assert len(rows) == 3 * 2 * 2  # cases, stages, variants
    assert {r["variant"] for r in rows} == set(peaks.VARIANTS)
    assert all(math.isfinite(r["median_s"]) and r["median_s"] > 0 and r["peak_mib"] >= 0 for r in rows)
    assert rows[-1]["peaks"] > peaks_module.GREEDY_MAX_PEAKS  # the low threshold reaches the rounds
    text = peaks.markdown(result)
    assert text.count("\n| ") == 2 + len(rows)


def test_variants_that_disagree_fail_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    real = peaks_module.find_peaks

    def off_by_one_in_rounds(scores, threshold, min_distance):  # type: ignore[no-untyped-def]
        found = real(scores, threshold, min_distance)
        if scores.size > peaks_module.GREEDY_MAX_PEAKS:  # the service's variant
            return peaks_module.Peaks(found.index + 1, found.probability)
        return found

    monkeypatch.setattr(peaks_module, "find_peaks", off_by_one_in_rounds)
    with pytest.raises(AssertionError, match="disagree"):
        peaks.measure(ROOT / "models" / "bump", length=50_000, repeats=1)
