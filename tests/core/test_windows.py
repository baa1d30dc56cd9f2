"""Windowed inference equals whole-signal inference, on a real onnxruntime session."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from app.core.model import InferenceOptions, OnnxModel
from app.core.windows import WindowPlan, least_window, score_pieces


def test_plan_tiles_the_signal_exactly() -> None:
    plan = WindowPlan.for_model(window=256, radius=30, alignment=4)
    assert plan.margin == 32 and plan.window == 256
    for length in [1, 255, 256, 257, 300, 448, 449, 1000, 5003]:
        pieces = plan.split(0, length)
        covered = np.zeros(length, dtype=int)
        for p in pieces:
            assert p.start % plan.alignment == 0
            assert 0 <= p.start <= p.keep_start < p.keep_stop <= p.stop <= length
            assert p.length <= plan.window
            # Kept samples are at least `margin` from a cut that is not the signal's edge.
            assert p.keep_start == 0 or p.keep_start - p.start >= plan.margin
            assert p.keep_stop == length or p.stop - p.keep_stop >= plan.margin
            covered[p.keep_start : p.keep_stop] += 1
        assert np.all(covered == 1)
        assert all(p.length == plan.window for p in pieces[:-1])


def test_window_too_short_for_the_model() -> None:
    with pytest.raises(ValueError, match="too short"):
        WindowPlan.for_model(window=100, radius=30, alignment=4)


@pytest.mark.parametrize(("radius", "alignment"), [(30, 4), (563, 8), (665, 8), (0, 1), (103, 4), (7, 16)])
def test_least_window_is_the_least_a_plan_takes(radius: int, alignment: int) -> None:
    least = least_window(radius, alignment)
    plan = WindowPlan.for_model(window=least, radius=radius, alignment=alignment)
    assert plan.window >= 4 * plan.margin and plan.window % alignment == 0
    with pytest.raises(ValueError, match=f"SHAPE_DETECTOR_WINDOW.*use at least {least}$"):
        WindowPlan.for_model(window=least - 1, radius=radius, alignment=alignment)


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("length", [511, 512, 513, 700, 1024, 1025, 1999, 2048, 3001, 4103])
def test_windowed_equals_whole(
    tiny_model_dir: Path, tiny_strided_model_dir: Path, length: int, strided: bool
) -> None:
    """Lengths around window boundaries (window 512 or 1024) and odd offsets against the alignment."""
    model_dir = tiny_strided_model_dir if strided else tiny_model_dir
    window = 1024 if strided else 512
    whole = OnnxModel(model_dir, InferenceOptions(window=1 << 20))
    small = OnnxModel(model_dir, InferenceOptions(window=window, max_batch_samples=3000))
    assert small.plan.alignment == (8 if strided else 4)
    rng = np.random.default_rng(length)
    x = (rng.standard_normal(length) * 3 + np.linspace(0, 20, length)).astype(np.float32)
    ref = whole.run(x[None])[0]
    got = small.scores([x])[0]
    assert (len(small.plan.split(0, length)) > 1) == (length > window)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_results_do_not_depend_on_the_other_signals(tiny_model_dir: Path) -> None:
    model = OnnxModel(tiny_model_dir, InferenceOptions(window=512, max_batch_samples=2048))
    rng = np.random.default_rng(1)
    signals = [rng.standard_normal(n).astype(np.float32) for n in (300, 1500, 300, 64, 2000)]
    together = model.scores(signals)
    alone = [model.scores([s])[0] for s in signals]
    reordered = model.scores(signals[::-1])[::-1]
    for a, b, c in zip(together, alone, reordered, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        np.testing.assert_allclose(c, b, atol=1e-5, rtol=0)


def test_whole_signals_batch_with_windows_of_their_length(tiny_model_dir: Path) -> None:
    """A signal no longer than a window runs whole, in the batches of its length: with a cut
    signal's full windows when it is a window long, and its curve a row of that batch's scores."""
    model = OnnxModel(tiny_model_dir, InferenceOptions(window=512, max_batch_samples=1 << 20))
    calls: list[tuple[int, ...]] = []
    outputs: list[np.ndarray] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        outputs.append(model.run(batch))
        return outputs[-1]

    rng = np.random.default_rng(3)
    signals = [rng.standard_normal(n).astype(np.float32) for n in (512, 1500, 300, 512)]
    got = score_pieces(signals, model.plan, run, 1 << 20)
    pieces = Counter(p.length for p in model.plan.split(1, 1500))
    assert len(pieces) > 1 and pieces[512] >= 1  # the cut signal has full windows and a last one
    rows = Counter({512: 2, 300: 1}) + pieces  # one batch per length
    assert sorted(calls) == sorted((n, length) for length, n in rows.items())
    for i in (0, 2, 3):  # whole: rows of their batch's scores, not copies
        assert any(np.shares_memory(got[i], out) for out in outputs)
        np.testing.assert_allclose(got[i], model.run(signals[i][None])[0], atol=1e-5, rtol=0)
    assert not any(np.shares_memory(got[1], out) for out in outputs)  # cut: stitched into its own
    whole = OnnxModel(tiny_model_dir, InferenceOptions(window=1 << 20))
    np.testing.assert_allclose(got[1], whole.run(signals[1][None])[0], atol=1e-5, rtol=0)


def test_detect_uses_card_defaults_and_matches_peaks(tiny_model_dir: Path) -> None:
    model = OnnxModel(tiny_model_dir)
    x = np.random.default_rng(2).standard_normal(800)
    (d,) = model.detect([x], return_scores=True)
    assert d.scores is not None
    assert d.probability == pytest.approx(float(d.scores.max()))
    assert d.detected == (d.probability >= model.card.threshold)
    assert bool(len(d.peaks)) == d.detected
    (d2,) = model.detect([x], threshold=0.01, min_distance=1)
    assert d2.scores is None and len(d2.peaks) >= len(d.peaks)


def test_curves_are_float32_and_contiguous_whatever_run_returns(tiny_model_dir: Path) -> None:
    """A run giving float64 scores, or a transposed (Fortran-ordered) array, still gives every
    signal a contiguous float32 curve, whole or cut: the answers' encoders need one."""
    model = OnnxModel(tiny_model_dir, InferenceOptions(window=512))
    rng = np.random.default_rng(5)
    signals = [rng.standard_normal(n).astype(np.float32) for n in (300, 300, 1500)]
    for convert in (lambda a: a.astype(np.float64), lambda a: np.asfortranarray(a)):
        got = score_pieces(signals, model.plan, lambda b, c=convert: c(model.run(b)), 1 << 20)
        for curve, s in zip(got, signals, strict=True):
            assert curve.dtype == np.float32 and curve.flags.c_contiguous and curve.shape == s.shape
