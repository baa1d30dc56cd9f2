"""OnnxModel: what it refuses to load, and what its warm-up runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
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


def test_warm_up_calls_are_no_larger_than_a_request_makes(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long min_length is not run in one call of its whole length (3 000 000 samples took
    1.2 GB): each call holds at most max_batch_samples samples, or one window if longer."""
    model_dir = copy_with_min_length(tiny_model_dir, tmp_path / "tiny", 50_000)
    shapes: list[tuple[int, ...]] = []
    run = OnnxModel.run

    def recorded(self: OnnxModel, batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return run(self, batch)

    monkeypatch.setattr(OnnxModel, "run", recorded)
    for window, max_batch in ((1024, 4096), (8192, 4096)):
        shapes.clear()
        model = OnnxModel(model_dir, InferenceOptions(window=window, max_batch_samples=max_batch))
        model.warm_up()
        assert shapes, "warm-up ran nothing"
        largest = max(max_batch, model.plan.window)
        assert all(rows * length <= largest and length <= model.plan.window for rows, length in shapes), (
            shapes
        )


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc (Linux)")
def test_memory_does_not_grow_with_each_new_input_shape() -> None:
    """Signals of any length make ever new input shapes. With onnxruntime's memory pattern on
    (its default) RSS grew about 4 KiB per new shape and stayed: 2000 lengths, +7.6 MiB."""
    model = OnnxModel(Path(__file__).parents[2] / "models" / "bump", InferenceOptions(intra_op_threads=1))
    for length in range(1000, 1200):  # the arena and the allocator warmed up
        model.run(np.zeros((1, length), np.float32))
    before = _rss_mib()
    for length in range(3000, 5000):
        model.run(np.zeros((1, length), np.float32))
    assert _rss_mib() - before < 4.0
