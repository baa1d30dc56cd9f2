"""The shipped default model: its card, its file, and the quality goals it claims and meets."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from app.core.card import load_card
from app.core.model import OnnxModel
from training.evaluate import matched_filter_curves, metrics
from training.scenario import BUMP, make_dataset, suites

MODEL = Path(__file__).resolve().parents[2] / "models" / "bump"


@pytest.fixture(scope="module")
def card():  # type: ignore[no-untyped-def]
    return load_card(MODEL)  # verifies the sha256 too


def test_card_and_file(card) -> None:  # type: ignore[no-untyped-def]
    assert card.name == "bump" and card.labels == ["bump"]
    assert (MODEL / "model.onnx").stat().st_size < 2_000_000
    assert card.opset >= 17 and card.min_length <= 64
    assert card.template == pytest.approx(BUMP.values.tolist()) and card.template_center == 20
    assert card.parity_max_abs_error is not None and card.parity_max_abs_error <= 1e-4
    assert card.training["dry_run"] is False
    onnx.checker.check_model(onnx.load(str(MODEL / "model.onnx")), full_check=True)
    readme = (MODEL / "README.md").read_text()
    assert f"sha256 of model.onnx: `{card.sha256}`" in readme


# Goals of the shipped model on the held-out suites (numbers come from the card, which the
# training run computed by running the exported ONNX file through app.core).
AUC_MARGIN = {"white": 0.001, "lowsnr": 0.003, "jitter": 0.001}
F1_MARGIN = {"white": 0.01, "lowsnr": 0.02, "jitter": 0.01}


@pytest.mark.parametrize("suite", ["white", "lowsnr", "jitter", "nuisance"])
def test_quality_goals_in_the_card(card, suite: str) -> None:  # type: ignore[no-untyped-def]
    m, mf = card.metrics[suite]["model"], card.metrics[suite]["matched_filter"]
    assert m.signals >= 2000
    if suite == "nuisance":
        assert m.auc >= 0.995 and m.f1 >= 0.90
    else:
        assert m.auc >= mf.auc - AUC_MARGIN[suite]
        assert m.f1 >= mf.f1 - F1_MARGIN[suite]
    if suite != "lowsnr":
        assert m.loc_error_median == 0 and m.loc_error_p95 is not None and m.loc_error_p95 <= 2


def test_fresh_signals_agree_with_the_card(card) -> None:  # type: ignore[no-untyped-def]
    """An independent check on signals the card never saw (new seed), through app.core."""
    model = OnnxModel(MODEL)
    for suite in ("white", "nuisance"):
        data = make_dataset(suites()[suite], 300, seed=777)
        got = metrics(model.scores(data.signals), data.events, card.threshold, card.min_distance)
        assert got["auc"] >= 0.99, (suite, got)
        assert got["f1"] >= card.metrics[suite]["model"].f1 - 0.05, (suite, got)
        assert got["loc_error_median"] == 0
    mf = matched_filter_curves(data, BUMP)  # the nuisance suite defeats the matched filter
    assert metrics(mf, data.events, 5.0, card.min_distance)["auc"] < 0.9


def test_model_accepts_any_length_from_min_length(card) -> None:  # type: ignore[no-untyped-def]
    model = OnnxModel(MODEL)
    rng = np.random.default_rng(0)
    for n in (card.min_length, card.min_length + 1, 100, 333, 4097):
        (curve,) = model.scores([rng.standard_normal(n)])
        assert curve.shape == (n,) and np.all((curve >= 0) & (curve <= 1))
