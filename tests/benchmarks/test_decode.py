"""The JSON decoding benchmark: both paths of both routes measured, and they must agree."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from app.core import oip
from benchmarks import decode
from benchmarks.servers import ROOT


def test_both_paths_of_both_routes_are_measured() -> None:
    rows = decode.measure(ROOT / "models" / "bump", turns=1, budget_s=0.001)
    assert [(r["route"], r["shape"]) for r in rows] == [
        ("/v1", "1x1024"),
        ("/v2", "1x1024"),
        ("/v1", "64x1024"),
        ("/v2", "64x1024"),
    ]
    for r in rows:
        assert math.isfinite(r["plain_s"]) and r["plain_s"] > 0
        assert math.isfinite(r["general_s"]) and r["general_s"] > 0
    assert decode.markdown(rows).count("\n| /v") == 4


def test_a_plain_path_that_decodes_otherwise_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    real = oip._rows_from_values

    def off_by_one(values: Any, rows: int, length: int) -> list[Any]:
        return [s + np.float32(1) for s in real(values, rows, length)]

    monkeypatch.setattr(oip, "_rows_from_values", off_by_one)
    with pytest.raises(SystemExit, match="/v2 1x1024: the two paths decode different signals"):
        decode.measure(ROOT / "models" / "bump", turns=1, budget_s=0.001)
