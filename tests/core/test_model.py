"""OnnxModel: what it refuses to load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.core.card import CardError
from app.core.model import InferenceOptions, OnnxModel


def copy_with_min_length(source: Path, target: Path, min_length: int) -> Path:
    shutil.copytree(source, target)
    card = json.loads((target / "card.json").read_text())
    card["min_length"] = min_length
    (target / "card.json").write_text(json.dumps(card))
    return target


def test_a_card_longer_than_any_request_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = copy_with_min_length(tiny_model_dir, tmp_path / "tiny", 3_000_000)
    with pytest.raises(CardError) as err:
        OnnxModel(model_dir, InferenceOptions(window=1024, max_signal_length=100_000))
    assert "min_length 3000000 is above SHAPE_DETECTOR_MAX_SIGNAL_LENGTH (100000)" in str(err.value)
    OnnxModel(model_dir, InferenceOptions(window=1024, max_signal_length=3_000_000))  # at the limit: loads
    OnnxModel(model_dir, InferenceOptions(window=1024))  # no limit given (training, tools): loads
