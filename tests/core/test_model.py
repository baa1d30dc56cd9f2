"""OnnxModel: what it refuses to load, and what its warm-up runs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from app.core import card as card_module
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


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        pytest.param(
            lambda s: s * 10 - 5,
            ", not probabilities in [0, 1] (exported without its final sigmoid?)",
            id="logits",
        ),
        pytest.param(lambda s: s[:, :-1], " of shape [1, 255], not one per sample", id="shape"),
        pytest.param(lambda s: s / 0, " that are not finite", id="nan"),
    ],
)
def test_a_model_whose_scores_are_not_probabilities_is_refused_saying_why(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, scores: Any, message: str
) -> None:
    """Logits were served: every probability in answers near 0 or 1 (clipped by calibration),
    or outside [0, 1]."""
    run = OnnxModel.run
    monkeypatch.setattr(OnnxModel, "run", lambda self, batch: scores(run(self, batch)))
    model = OnnxModel(tiny_model_dir, InferenceOptions(window=1024, max_batch_samples=4096))
    with pytest.raises(RuntimeError) as err, np.errstate(divide="ignore", invalid="ignore"):
        model.warm_up()
    assert "model tiny: warm-up on zeros of shape [1, 256] gave scores" in str(err.value)
    assert message in str(err.value)
    assert "'scores' must be a probability per input sample: re-export model.onnx" in str(err.value)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (
            {"name": "signal", "dtype": "float64", "shape": ["batch", "length"]},
            "signal float64 [variable, variable]",
        ),
        ({"name": "signal", "dtype": "float32", "shape": [1, 1024]}, "signal float32 [1, 1024]"),
    ],
)
def test_a_card_that_misdescribes_the_model_tensors_is_refused(
    tiny_model_dir: Path, tmp_path: Path, spec: dict[str, Any], says: str
) -> None:
    """The card is the contract clients read (GET /v1/models): one that says the model takes
    float64, or signals of 1024 samples only, is not the model's, whatever its sha256."""
    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, model_dir)
    card = json.loads((model_dir / "card.json").read_text())
    card["inputs"] = [spec]
    (model_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(CardError) as err:
        OnnxModel(model_dir)
    assert f"{model_dir / 'model.onnx'} takes signal float32 [variable, variable] and gives " in str(
        err.value
    )
    assert f"its card.json says it takes {says} and gives probability float32 [variable], " in str(err.value)
    assert str(err.value).endswith("the card is not this model's, export them together")


@pytest.mark.parametrize("fields", [{"receptive_field": 21}, {"alignment": 1}, {"alignment": 3}])
def test_a_card_that_understates_the_receptive_field_or_alignment_is_refused(
    tiny_strided_model_dir: Path, tmp_path: Path, fields: dict[str, int]
) -> None:
    """The windows of a long signal are cut by the card's receptive field and alignment: with
    smaller ones than the model's, scores near the seams were wrong (by up to 0.2), silently."""
    model_dir = tmp_path / "strided"
    shutil.copytree(tiny_strided_model_dir, model_dir)
    card = json.loads((model_dir / "card.json").read_text())
    card.update(fields)
    (model_dir / "card.json").write_text(json.dumps(card))
    model = OnnxModel(model_dir, InferenceOptions(window=4096))
    with pytest.raises(RuntimeError) as err:
        model.warm_up()
    assert (
        f"model strided: its card's receptive_field {card['receptive_field']} and alignment "
        f"{card['alignment']} are not the model's: scored in windows they allow, a signal gets scores up to "
    ) in str(err.value)
    assert str(err.value).endswith("re-export the card with the model (training measures both)")
    OnnxModel(tiny_strided_model_dir, InferenceOptions(window=4096)).warm_up()  # its own card


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


def replaced_once_hashed(path: Path, replacement: bytes) -> Any:
    """A ``hashlib`` for ``app.core.card`` whose sha256, once its digest is taken, replaces the
    file at ``path``: a model file changed on disk between its check and its load."""

    class Sha256:
        def __init__(self, data: bytes = b"") -> None:
            self.real = hashlib.sha256(data)

        def update(self, data: bytes) -> None:
            self.real.update(data)

        def hexdigest(self) -> str:
            path.write_bytes(replacement)
            return self.real.hexdigest()

    return SimpleNamespace(sha256=Sha256)


def test_the_session_is_made_from_the_bytes_that_were_verified(
    tiny_model_dir: Path, tiny_strided_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model file is read once: its sha256 is checked on those bytes and the session is
    made from them, so a file replaced after the check is not what serves."""
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "tiny")
    other = (tiny_strided_model_dir / "model.onnx").read_bytes()
    options = InferenceOptions(window=1 << 20)
    x = np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)
    verified, replacement = (
        OnnxModel(tiny_model_dir, options).run(x),
        OnnxModel(tiny_strided_model_dir, options).run(x),
    )
    assert not np.allclose(verified, replacement)  # the two models tell apart
    monkeypatch.setattr(card_module, "hashlib", replaced_once_hashed(model_dir / "model.onnx", other))
    model = OnnxModel(model_dir, options)
    monkeypatch.undo()
    assert (model_dir / "model.onnx").read_bytes() == other  # replaced after the check
    np.testing.assert_array_equal(model.run(x), verified)
    with pytest.raises(CardError, match="does not match the card's"):  # what is on disk now
        OnnxModel(model_dir, options)
