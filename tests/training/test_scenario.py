import re
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from training.scenario import (
    BUMP,
    EVAL_SEEDS,
    POLARITY_AMBIGUOUS,
    VALIDATION_SEEDS,
    Scenario,
    Template,
    inverted_match,
    make_dataset,
    polarity_stretch_limit,
    suites,
    training_scenario,
)
from training.template import load_template, template_from_values
from training.train import parse_overrides


def test_bump_template_is_the_reference() -> None:
    s = np.arange(-20, 21)
    np.testing.assert_allclose(BUMP.values, np.exp(-((s / 6) ** 2) / 2) * np.cos(2 * np.pi * s / 16))
    assert BUMP.values.size == 41 and BUMP.center == 20
    assert int(np.argmax(BUMP.values)) == BUMP.center


@pytest.mark.parametrize("suite", ["white", "lowsnr", "jitter", "nuisance"])
def test_lengths_spacing_and_event_counts(suite: str) -> None:
    data = make_dataset(suites()[suite], 600, seed=7)
    lengths = np.array([x.size for x in data.signals])
    assert lengths.min() >= 256 and lengths.max() <= 2048
    counts = np.array([e.size for e in data.events])
    assert 0.43 < (counts == 0).mean() < 0.57  # none with probability 0.5
    assert set(counts[counts > 0]) == {1, 2, 3}
    for x, e in zip(data.signals, data.events, strict=True):
        assert np.all(e >= 20) and np.all(e <= x.size - 21)
        assert np.all(np.diff(e) >= 41)


@pytest.mark.parametrize(("suite", "lo", "hi"), [("white", 4, 12), ("lowsnr", 3, 6)])
def test_snr_range(suite: str, lo: float, hi: float) -> None:
    """With the noise switched off, each event's amplitude gives its matched-filter SNR."""
    clean = replace(suites()[suite], noise=0.0, max_events=1)
    data = make_dataset(clean, 400, seed=3)
    snrs = np.array(
        [
            np.abs(x).max() / BUMP.values.max() * BUMP.norm
            for x, e in zip(data.signals, data.events, strict=True)
            if e.size
        ]
    )
    assert snrs.min() >= lo - 1e-9 and snrs.max() <= hi + 1e-9
    assert snrs.min() < lo + 0.3 and snrs.max() > hi - 0.3  # spans the range


def test_jitter_stretches_the_template_around_its_centre() -> None:
    shape, centre = BUMP.stretched(1.25)
    assert int(np.argmax(shape)) == centre
    assert shape.size > BUMP.values.size
    s = np.arange(shape.size) - centre
    expected = np.exp(-((s / 1.25 / 6) ** 2) / 2) * np.cos(2 * np.pi * s / 1.25 / 16)
    np.testing.assert_allclose(shape, expected, atol=1e-12)


def test_nuisance_applies_gain_and_offset() -> None:
    data = make_dataset(suites()["nuisance"], 300, seed=5)
    scales = np.array([np.std(x) for x in data.signals])
    assert scales.min() < 0.05 and scales.max() > 20


def test_seeds_are_fixed_and_disjoint() -> None:
    assert not set(EVAL_SEEDS.values()) & set(VALIDATION_SEEDS.values())
    a = make_dataset(suites()["white"], 5, seed=EVAL_SEEDS["white"])
    b = make_dataset(suites()["white"], 5, seed=EVAL_SEEDS["white"])
    for x, y in zip(a.signals, b.signals, strict=True):
        np.testing.assert_array_equal(x, y)


def test_any_template_works() -> None:
    tpl = Template(np.array([0.0, 1.0, 3.0, -1.0, 0.5]), center=2)
    data = make_dataset(replace(suites(tpl)["white"], length=(64, 80)), 50, seed=1)
    for x, e in zip(data.signals, data.events, strict=True):
        assert np.all(np.diff(e) >= 5) and np.all(e >= 2) and np.all(e <= x.size - 3)


def _correlations(x: np.ndarray, tpl: Template, positions: np.ndarray) -> np.ndarray:
    k = tpl.values / tpl.norm
    return np.array([float(np.dot(x[p - tpl.center : p - tpl.center + k.size], k)) for p in positions])


def test_inverted_decoys_are_not_events() -> None:
    """Polarity off: with p_inverted the signals also hold inverted copies, unlabelled."""
    sc = replace(suites()["white"], noise=0.0, p_inverted=1.0, p_empty=0.0, length=(1500, 2000))
    data = make_dataset(sc, 40, seed=2)
    decoys = 0
    for x, e in zip(data.signals, data.events, strict=True):
        assert np.all(_correlations(x, BUMP, e) > 3.9)  # labelled events are upright (SNR >= 4)
        full = np.correlate(x, BUMP.values / BUMP.norm, mode="valid")
        troughs = np.flatnonzero(full < -3.9) + BUMP.center  # strongly inverted copies
        decoys += troughs.size > 0
        assert not np.any(np.abs(troughs[:, None] - e[None, :]) <= 5)  # never at an event
    assert decoys == len(data)


def test_polarity_on_labels_inverted_events() -> None:
    sc = replace(suites(polarity=True)["white"], noise=0.0, p_empty=0.0)
    data = make_dataset(sc, 200, seed=4)
    corr = np.concatenate([_correlations(x, BUMP, e) for x, e in zip(data.signals, data.events, strict=True)])
    assert (corr < -3.9).sum() > 0.3 * corr.size and (corr > 3.9).sum() > 0.3 * corr.size


def test_suites_are_unchanged_by_the_decoy_option() -> None:
    """p_inverted = 0 draws nothing extra: the held-out suites stay what they were."""
    a = make_dataset(suites()["nuisance"], 20, seed=EVAL_SEEDS["nuisance"])
    b = make_dataset(replace(suites()["nuisance"], p_inverted=0.0), 20, seed=EVAL_SEEDS["nuisance"])
    for x, y in zip(a.signals, b.signals, strict=True):
        np.testing.assert_array_equal(x, y)
    assert suites()["white"].p_inverted == 0.0


def test_long_templates_get_long_signals() -> None:
    from training.scenario import signal_lengths, training_scenario

    long = Template(np.sin(np.arange(1025) / 20.0), center=512)
    assert signal_lengths(BUMP) == (256, 2048)
    lo, hi = signal_lengths(long)
    assert lo >= 6 * 1025
    data = make_dataset(training_scenario(long), 10, seed=3)  # 3 events + decoys fit
    for x, e in zip(data.signals, data.events, strict=True):
        assert lo <= x.size <= hi and np.all(np.diff(e) >= 1025)


def test_crowded_placement_falls_back_to_exact_draws() -> None:
    from training.scenario import place_centres

    rng = np.random.default_rng(0)
    for _ in range(50):
        c = place_centres(rng, 300, 3, 100, 0, 200)  # only one way: 0, 100, 200
        assert c.tolist() == [0, 100, 200]
    with pytest.raises(ValueError, match="cannot place 3 events"):
        place_centres(rng, 300, 3, 101, 0, 200)


def test_inverted_match_tells_which_polarities_can_be_told_apart() -> None:
    """An inverted bump is no bump; an inverted chirp is a stretched, shifted upright chirp."""
    chirp = load_template(Path(__file__).parents[2] / "training" / "templates" / "chirp.npy")
    bump_match, _ = inverted_match(BUMP, (0.75, 1.33))
    assert 0.6 < bump_match < POLARITY_AMBIGUOUS
    assert inverted_match(chirp)[0] < POLARITY_AMBIGUOUS  # unstretched, a shifted copy fits at 0.86
    match, at = inverted_match(chirp, (0.75, 1.33))
    assert match > 0.97 and 0.9 < at < 1.0
    # the same computation by hand at that stretch: the largest cosine over all lags
    up, inv = chirp.stretched(at)[0], -chirp.values
    up, inv = up - up.mean(), inv - inv.mean()
    lags = np.correlate(np.pad(up, inv.size), inv, mode="valid")
    assert match == pytest.approx(lags.max() / np.linalg.norm(up) / np.linalg.norm(inv))


def test_the_widest_stretch_that_keeps_the_polarities_apart() -> None:
    chirp = load_template(Path(__file__).parents[2] / "training" / "templates" / "chirp.npy")
    assert polarity_stretch_limit(BUMP) == 0.5  # the widest asked: never ambiguous
    assert polarity_stretch_limit(chirp) == 0.0  # 1 % is already too much
    assert inverted_match(chirp, (0.99, 1.01))[0] >= POLARITY_AMBIGUOUS > inverted_match(chirp)[0]
    s = np.arange(64)
    ringing = template_from_values(np.sin(2 * np.pi * s * 8 / 64) * np.hanning(64))
    assert polarity_stretch_limit(ringing) is None  # half a period away, its own inverted copy


def test_the_readme_table_of_scenario_keys_gives_every_key_and_its_default() -> None:
    """Every key ``--scenario KEY=VALUE`` takes (a field of ``Scenario`` but the template and
    the polarity, which have options of their own) has a row in the README's table, with the
    reference bump's training default."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)`", readme, re.MULTILINE))
    scenario = training_scenario()
    keys = [f.name for f in fields(Scenario) if f.name not in ("template", "polarity")]
    assert parse_overrides([f"{key}={documented.get(key, '')}" for key in keys if key in documented])
    wrong = {}
    for key in keys:
        value = getattr(scenario, key)
        expected = ",".join(f"{v:g}" for v in (value if isinstance(value, tuple) else (value,)))
        if documented.get(key) != expected:
            wrong[key] = (documented.get(key), expected)
    assert not wrong, f"README row differs from the code (README, code): {wrong}"
