"""Trained models: the shipped ones (models/) and the template-path results (training/results/).

Each card must claim, and its file must meet, the quality goals of the reference scenario
against the matched filter on the held-out suites, and its probabilities must be calibrated.
The numbers come from the card, which the training run computed by running the exported ONNX
file through app.core (``test_card_metrics_are_the_exported_files`` computes them again from
the card's seeds); ``test_fresh_signals_agree_with_the_card`` re-checks on new signals.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest

from app.core.card import Card, load_card
from app.core.model import OnnxModel
from training import evaluate as ev
from training.report import card_template
from training.scenario import BUMP, Dataset, make_dataset, suites

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.parent for p in (ROOT / "models").glob("*/card.json"))
RESULTS = sorted(p.parent for p in (ROOT / "training" / "results").glob("*/card.json"))
TRAINED = SHIPPED + RESULTS
IDS = [f"{p.parent.name}/{p.name}" for p in TRAINED]


def test_two_shipped_models_and_a_template_result() -> None:
    assert [p.name for p in SHIPPED] == ["arrival", "bump"]
    assert [p.name for p in RESULTS] == ["chirp"]


@pytest.fixture(scope="module", params=TRAINED, ids=IDS)
def trained(request: pytest.FixtureRequest) -> tuple[Path, Card]:
    return request.param, load_card(request.param)  # verifies the sha256 too


def test_card_and_file(trained: tuple[Path, Card]) -> None:
    path, card = trained
    assert card.name == path.name and card.labels == [path.name]
    assert (path / "model.onnx").stat().st_size < 2_000_000
    assert card.opset >= 17 and card.min_length <= 64
    assert card.template is not None and card.template_center is not None
    assert card.parity_max_abs_error is not None and card.parity_max_abs_error <= 1e-4
    assert card.macs_per_sample is not None and card.macs_per_sample <= 20_000
    assert card.training["dry_run"] is False
    onnx.checker.check_model(onnx.load(str(path / "model.onnx")), full_check=True)
    readme = (path / "README.md").read_text()
    assert f"sha256 of model.onnx: `{card.sha256}`" in readme
    assert (path / "report.html").is_file()


def test_bump_is_the_reference_template() -> None:
    card = load_card(ROOT / "models" / "bump")
    assert card.template == pytest.approx(BUMP.values.tolist()) and card.template_center == 20


def test_training_time(trained: tuple[Path, Card]) -> None:
    """The template path trains within 25 minutes on this 2-core machine."""
    _, card = trained
    assert card.training["seconds"] <= 25 * 60


# Goals of #2 on the held-out suites, for any template trained with the defaults.
AUC_MARGIN = {"white": 0.001, "lowsnr": 0.003, "jitter": 0.001}
F1_MARGIN = {"white": 0.01, "lowsnr": 0.02, "jitter": 0.01}

# The goals each trained model misses, as measured (see the cards and the README). The test
# fails when a model misses a goal not listed here, and also when it meets one listed here,
# so this table stays the truth.
KNOWN_MISSES: dict[tuple[str, str], set[str]] = {}


def missed_goals(card: Card, suite: str) -> set[str]:
    m, mf = card.metrics[suite]["model"], card.metrics[suite]["matched_filter"]
    missed = set()
    if suite == "nuisance":
        if m.auc < 0.995:
            missed.add("auc")
        if m.f1 < 0.90:
            missed.add("f1")
    else:
        if m.auc < mf.auc - AUC_MARGIN[suite]:
            missed.add("auc")
        if m.f1 < mf.f1 - F1_MARGIN[suite]:
            missed.add("f1")
    if suite != "lowsnr" and not (
        m.loc_error_median == 0 and m.loc_error_p95 is not None and m.loc_error_p95 <= 2
    ):
        missed.add("localisation")
    return missed


@pytest.mark.parametrize("suite", ["white", "lowsnr", "jitter", "nuisance"])
def test_quality_goals_in_the_card(trained: tuple[Path, Card], suite: str) -> None:
    _, card = trained
    assert card.metrics[suite]["model"].signals >= 2000
    assert missed_goals(card, suite) == KNOWN_MISSES.get((card.name, suite), set())


def test_calibration_goal(trained: tuple[Path, Card]) -> None:
    """ECE <= 0.02 after calibration on held-out data from the training distribution."""
    _, card = trained
    assert card.calibration is not None
    ece = card.calibration.model_dump()["ece"]
    assert ece["bins"] == 10 and ece["held_out"]["signal"]["after"]["samples"] >= 4000
    for kind in ("signal", "peak", "reported_peak"):
        assert ece["held_out"][kind]["after"]["ece"] <= 0.02, kind
    assert set(ece["suites"]) == {"white", "lowsnr", "jitter", "nuisance"}


def test_inverted_copies_are_not_events(trained: tuple[Path, Card]) -> None:
    path, card = trained
    check = card.training["polarity_check"]
    assert card.polarity is False and check["inverted_counts_as_event"] is False
    assert check["detection_rate_upright"] >= 0.94
    info = card.training["polarity"]  # how well an inverted copy fits a stretched, shifted event
    if info["identifiable"]:
        assert info["inverted_match"] < 0.9 and info["decoys"] is True
        assert check["detection_rate_inverted"] <= 0.1
    else:  # the chirp: no detector can reject them without rejecting events; the card says so
        assert info["inverted_match"] >= 0.9 and info["decoys"] is False
        assert card.training["architecture"]["matched_veto"] == 0.0
        readme = (path / "README.md").read_text()
        assert f"the model detects {check['detection_rate_inverted']:.0%} of them" in readme
        assert "the two polarities cannot be told apart" in readme


def recomputed_metrics(path: Path, suite: str) -> dict[str, dict[str, float | int | None]]:
    """One suite's held-out metrics computed again as training computes them: the suite's test
    and validation sets regenerated from the card's seeds, the exported file run by app.core
    (``evaluate.shipped_metrics``), the matched filter at the model's false-alarm rate on the
    suite's event-free validation signals at the card's threshold."""
    model = OnnxModel(path)
    card = model.card
    template = card_template(card)
    assert template is not None
    data = card.training["data"]
    scenario = suites(template, polarity=card.polarity)[suite]

    def generated(split: str) -> Dataset:
        spec = data[split][suite]
        return make_dataset(scenario, int(spec["signals"]), int(spec["seed"]))

    test, val = generated("test"), generated("validation")
    shipped, _ = ev.shipped_metrics(model, test, card.threshold, card.min_distance)
    raw_threshold = card.calibrator.peak.raw_threshold(card.threshold)
    rate = ev.false_alarm_rate(ev.model_curves(model, val), val.events, raw_threshold)
    two_sided = card.polarity
    mf_val = ev.matched_filter_curves(val, template, two_sided)
    mf_threshold = ev.threshold_for_rate(mf_val, val.events, rate)
    mf_test = ev.matched_filter_curves(test, template, two_sided)
    mf = ev.metrics(mf_test, test.events, mf_threshold, card.min_distance)
    return {"model": shipped, "matched_filter": mf}


# Two of the four suites (a few seconds each): the faint events and the nuisances.
@pytest.mark.parametrize("suite", ["lowsnr", "nuisance"])
def test_card_metrics_are_the_exported_files(trained: tuple[Path, Card], suite: str) -> None:
    """The card's held-out numbers are what its file gives on the card's own held-out and
    validation seeds (exactly, on the CPUs here). Counts within 2 and rates within 0.001:
    another CPU's onnxruntime kernels may move a score sitting on a threshold."""
    path, card = trained
    got = recomputed_metrics(path, suite)
    for detector, metrics in got.items():
        expected = card.metrics[suite][detector].model_dump()
        assert set(metrics) <= set(expected), (detector, sorted(set(metrics) - set(expected)))
        for key, value in metrics.items():
            want = expected[key]
            if key == "threshold" and detector == "model":
                assert value == want, (suite, detector, key, value, want)
            elif isinstance(value, int):
                assert abs(value - want) <= 2, (suite, detector, key, value, want)
            else:
                assert value == pytest.approx(want, abs=1e-3), (suite, detector, key, value, want)


def test_fresh_signals_agree_with_the_card(trained: tuple[Path, Card]) -> None:
    """An independent check on signals the card never saw (new seed), through app.core."""
    path, card = trained
    model = OnnxModel(path)
    template = card_template(card)
    assert template is not None
    for suite in ("white", "nuisance"):
        data = make_dataset(suites(template)[suite], 300, seed=777)
        curves = ev.calibrated_curves(model, ev.model_curves(model, data))
        got = ev.metrics(curves, data.events, card.threshold, card.min_distance)
        expected = card.metrics[suite]["model"]
        assert got["auc"] >= expected.auc - 0.015, (suite, got)
        assert got["f1"] >= expected.f1 - 0.05, (suite, got)
        assert got["loc_error_median"] <= expected.loc_error_median, (suite, got)
        shipped = model.detect(data.signals)
        assert [d.detected for d in shipped] == [float(c.max()) >= card.threshold for c in curves]
    mf = ev.matched_filter_curves(data, template)  # the nuisance suite defeats the matched filter
    assert ev.metrics(mf, data.events, 5.0, card.min_distance)["auc"] < 0.95


def test_model_accepts_any_length_from_min_length(trained: tuple[Path, Card]) -> None:
    path, card = trained
    model = OnnxModel(path)
    rng = np.random.default_rng(0)
    for n in (card.min_length, card.min_length + 1, 100, 333, 4097):
        (curve,) = model.scores([rng.standard_normal(n)])
        assert curve.shape == (n,) and np.all((curve >= 0) & (curve <= 1))


def test_windows_give_the_whole_signal_result(trained: tuple[Path, Card]) -> None:
    """The card's receptive field covers the whole graph, the matched-filter path's veto (a
    max over the kernel's reach) included: small windows reproduce the whole-signal scores."""
    from app.core.windows import WindowPlan, score_pieces

    path, card = trained
    model = OnnxModel(path)
    margin = WindowPlan.for_model(1 << 20, card.receptive_radius, card.alignment).margin
    plan = WindowPlan.for_model(4 * margin, card.receptive_radius, card.alignment)
    template = card_template(card)
    assert template is not None
    data = make_dataset(suites(template)["white"], 6, seed=778, length=4 * plan.window)
    signals = [np.asarray(x, dtype=np.float32) for x in data.signals]
    got = score_pieces(signals, plan, model.run, 1 << 20)
    for x, curve in zip(signals, got, strict=True):
        np.testing.assert_allclose(curve, model.run(x[None])[0], atol=1e-5, rtol=0)


def test_any_float32_amplitude_gives_the_same_answer(trained: tuple[Path, Card]) -> None:
    """The graph's normalisation scales each window by a power of two first (exact), so a
    signal at any float32 amplitude scores as at its ordinary one, bit for bit; before, a
    signal of ±3e38 scored NaN and one of 1e-33 or 6e36 scored as flat."""
    path, card = trained
    model = OnnxModel(path)
    template = card_template(card)
    assert template is not None
    data = make_dataset(suites(template)["white"], 8, seed=778)
    signals = [np.asarray(s, np.float32) / np.abs(s).max() for s in data.signals]  # |x| <= 1
    reference = model.scores(signals)
    for exponent in (-100, -60, 60, 120):
        scaled = model.scores([s * np.float32(2.0**exponent) for s in signals])
        for got, want in zip(scaled, reference, strict=True):
            np.testing.assert_array_equal(got, want)
    big = np.float32(np.finfo(np.float32).max)
    for extreme in (np.resize(np.array([big, -big], np.float32), 1024), np.full(1024, 1e-44, np.float32)):
        assert np.isfinite(model.scores([extreme])[0]).all()
