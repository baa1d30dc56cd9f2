"""The whole training pipeline, tiny: train, export, evaluate the ONNX file, write the card."""

from pathlib import Path

import numpy as np

from app.core.card import load_card
from app.core.model import OnnxModel
from training.scenario import make_dataset, suites
from training.train import main


def test_dry_run_end_to_end(tmp_path: Path) -> None:
    model_dir = main(["--dry-run", "--out", str(tmp_path), "--name", "dry"])
    card = load_card(model_dir)
    assert set(card.metrics) == {"white", "lowsnr", "jitter", "nuisance"}
    for by_detector in card.metrics.values():
        assert set(by_detector) == {"model", "matched_filter"}
        assert by_detector["model"].signals == 40
    assert card.training["dry_run"] is True
    assert card.parity_max_abs_error is not None and card.parity_max_abs_error <= 1e-4
    assert 0 < card.threshold < 1 and card.min_distance >= 1
    readme = (model_dir / "README.md").read_text()
    assert "| white | model |" in readme
    (d,) = OnnxModel(model_dir).detect([np.zeros(300)])
    assert 0 <= d.probability <= 1


def test_dry_run_on_user_data(tmp_path: Path) -> None:
    data = make_dataset(suites()["white"], 40, seed=9, length=512)
    events = np.array([(i, c) for i, e in enumerate(data.events) for c in e]).reshape(-1, 2)
    np.savez(tmp_path / "mine.npz", signals=np.stack(data.signals), events=events, label="blip")
    model_dir = main(
        ["--dry-run", "--data", str(tmp_path / "mine.npz"), "--out", str(tmp_path), "--name", "mine"]
    )
    card = load_card(model_dir)
    assert card.labels == ["blip"]
    assert set(card.metrics) == {"user"}
    assert set(card.metrics["user"]) == {"model", "matched_filter"}
    assert card.training["data"]["split"]["test"]["signals"] == 6


def test_single_layer_dry_run(tmp_path: Path) -> None:
    model_dir = main(["--dry-run", "--arch", "single", "--out", str(tmp_path), "--name", "one"])
    card = load_card(model_dir)
    assert card.alignment == 8  # the normalisation's scale blocks
    assert card.macs_per_sample == 42.0


def test_training_is_reproducible(tmp_path: Path) -> None:
    """The same seed gives the same ONNX file, byte for byte, and the same metrics."""
    a = load_card(main(["--dry-run", "--out", str(tmp_path / "a"), "--name", "rep"]))
    b = load_card(main(["--dry-run", "--out", str(tmp_path / "b"), "--name", "rep"]))
    assert a.sha256 == b.sha256
    assert a.metrics == b.metrics
    c = load_card(main(["--dry-run", "--out", str(tmp_path / "c"), "--name", "rep", "--seed", "7"]))
    assert c.sha256 != a.sha256
