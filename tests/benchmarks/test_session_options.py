"""The graph-optimisation benchmark: every variant measured, and each gives the service's scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import session_options
from benchmarks.servers import ROOT


def test_every_variant_is_measured_and_agrees_with_the_service() -> None:
    result = session_options.measure(ROOT / "models" / "bump", calls=20, repeats=1)
    names = list(result["variants"])
    assert names[:4] == list(session_options.LEVELS)
    assert names[4].startswith("optimised ahead of time")
    assert names[5] == session_options.MEMORY_PATTERN
    for v in result["variants"].values():
        assert all(math.isfinite(x) and x > 0 for x in v.values())
    assert result["optimised_bytes"] > 0
    text = session_options.markdown(result)
    assert text.count("\n| ") == 2 + len(names)  # header, rule, one row per variant


def test_a_variant_that_changes_the_scores_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    real = session_options.session

    def wrong_for_basic(path, so):  # type: ignore[no-untyped-def]
        made, seconds = real(path, so)
        if so.graph_optimization_level == session_options.ort.GraphOptimizationLevel.ORT_ENABLE_BASIC:

            class Off:
                def run(self, names, feeds):  # type: ignore[no-untyped-def]
                    return [made.run(names, feeds)[0] + np.float32(0.01)]

            return Off(), seconds
        return made, seconds

    monkeypatch.setattr(session_options, "session", wrong_for_basic)
    with pytest.raises(AssertionError, match="basic"):
        session_options.measure(ROOT / "models" / "bump", calls=5, repeats=1)
