"""The matched-filter gain rule (training.matched), on prepared logits with known answers."""

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from training.matched import GAINS, INVERTED_BUDGET, PolaritySets, choose_matched_gain


class Prepared:
    """Stands in for a DeepCNN: each "signal" is a (2, T) array of (network logit, matched filter)."""

    def __init__(self) -> None:
        self.matched: object | None = object()
        self.matched_gain = torch.tensor(0.0)
        self.dropped = False

    def eval(self) -> None:
        pass

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, 0], x[:, 1]

    def drop_matched_path(self) -> None:
        self.matched, self.dropped = None, True


def _set(pairs: list[tuple[np.ndarray, np.ndarray]], events: list[list[int]]) -> Any:
    return SimpleNamespace(
        signals=[np.stack([logit, m]) for logit, m in pairs], events=[np.array(e) for e in events]
    )


def _suite(rng: np.random.Generator, n: int = 300, t: int = 64) -> Any:
    """Half the signals hold an event at sample 30: the matched filter sees it clearly (+3),
    the network barely (+0.5), so a larger gain always ranks better."""
    pairs, events = [], []
    for i in range(n):
        logit, m = rng.normal(0, 1, t), rng.normal(0, 1, t)
        if i % 2:
            logit[30] += 0.5
            m[30] += 3.0
        pairs.append((logit, m))
        events.append([30] if i % 2 else [])
    return _set(pairs, events)


def _polarity(rng: np.random.Generator, n: int = 400, t: int = 64) -> PolaritySets:
    """Inverted copies: the network rejects them (logit -5), the matched filter answers, a
    quarter of them strongly (+9): with a large gain those cross any threshold."""
    noise = [(rng.normal(0, 1, t), rng.normal(0, 1, t)) for _ in range(n)]
    upright = [(np.full(t, 1.0), np.full(t, 3.0)) for _ in range(n)]
    inverted = []
    for k in range(n):
        m = rng.normal(0, 1, t)
        m[30] = 3.0 + 6.0 * (k % 4 == 0)
        inverted.append((np.full(t, -5.0), m))
    ev = [[30]] * n
    return PolaritySets(_set(noise, [[]] * n), _set(upright, ev), _set(inverted, ev))


def test_without_polarity_checks_the_best_validation_auc_wins() -> None:
    rng = np.random.default_rng(0)
    net = Prepared()
    out = choose_matched_gain(net, {"white": _suite(rng), "lowsnr": _suite(rng)}, None)  # type: ignore[arg-type]
    rows = out["candidates"]
    assert [r["gain"] for r in rows] == list(GAINS)
    # The best AUC (to 5 decimals) wins; of gains that tie there, the smallest.
    best = max(round(r["mean_auc"], 5) for r in rows)
    assert (
        out["gain"]
        == min(r["gain"] for r in rows if round(r["mean_auc"], 5) == best)
        == float(net.matched_gain)
    )
    assert out["gain"] >= 9 and rows[-1]["mean_auc"] > rows[0]["mean_auc"] + 0.05
    assert not net.dropped


def test_the_inverted_copy_budget_caps_the_gain() -> None:
    """Larger gains rank better, but past some gain the inverted copies get through (counted at
    the network alone's false-alarm rate): the rule takes the best gain within the budget, not
    the best."""
    rng = np.random.default_rng(1)
    net = Prepared()
    sets = _polarity(rng)
    out = choose_matched_gain(net, {"white": _suite(rng, n=150)}, sets, inverted_budget=0.05)  # type: ignore[arg-type]
    rows = out["candidates"]
    base = rows[0]
    key = "inverted_rate_at_equal_false_alarms"
    assert base["gain"] == 0.0 and base[key] < 0.05
    eligible = [r for r in rows if r[key] <= base[key] + 0.05]
    chosen = max(eligible, key=lambda r: r["mean_auc"])
    assert out["gain"] == chosen["gain"] == float(net.matched_gain)
    assert 0 < out["gain"] < max(GAINS)
    assert rows[-1][key] >= 0.2  # the largest gain lets the strong quarter through
    assert rows[-1]["mean_auc"] > chosen["mean_auc"]  # and would rank better: the budget binds
    for r in rows:  # each gain's operating point is recorded with the rates read there
        assert set(r["operating_point"]) == {"threshold", "min_distance", "f1"}
        assert all(0 <= r[k] <= 1 for k in ("empty_rate", "upright_rate", "inverted_rate", key))
    assert "at most 5 percentage points more often" in out["rule"]
    # The default budget: one point more inverted copies than the network alone lets through.
    assert INVERTED_BUDGET == 0.01
    default = choose_matched_gain(Prepared(), {"white": _suite(rng, n=150)}, sets)  # type: ignore[arg-type]
    rows = default["candidates"]
    chosen = next(r for r in rows if r["gain"] == default["gain"])
    assert chosen[key] <= rows[0][key] + 0.01 and default["gain"] <= out["gain"]
    assert "at most 1 percentage point more often" in default["rule"]
    # A zero budget: no more often at all.
    strict = choose_matched_gain(Prepared(), {"white": _suite(rng, n=150)}, sets, inverted_budget=0.0)  # type: ignore[arg-type]
    rows = strict["candidates"]
    chosen = next(r for r in rows if r["gain"] == strict["gain"])
    assert chosen[key] <= rows[0][key] and strict["gain"] <= default["gain"]
    assert "no more often" in strict["rule"]


def test_a_useless_path_is_dropped() -> None:
    """When the matched filter only adds noise, gain 0 wins and the path leaves the graph."""
    rng = np.random.default_rng(2)
    pairs, events = [], []
    for i in range(300):
        logit, m = rng.normal(0, 1, 64), rng.normal(0, 1, 64)
        if i % 2:
            logit[30] += 4.0
        pairs.append((logit, m))
        events.append([30] if i % 2 else [])
    net = Prepared()
    out = choose_matched_gain(net, {"white": _set(pairs, events)}, None)  # type: ignore[arg-type]
    assert out["gain"] == 0.0 and net.dropped


def test_validation_signals_that_all_hold_events_choose_by_event_f1() -> None:
    """No AUC without event-free signals (a user's recordings may all hold events): every gain
    had a NaN AUC, gain 0 won by default and the rule named the AUC. The pooled event F1 at each
    gain's operating point decides instead, and the rule says so."""
    rng = np.random.default_rng(3)
    pairs, events = [], []
    for _ in range(200):  # the matched filter sees the event clearly, the network barely
        logit, m = rng.normal(0, 1, 64), rng.normal(0, 1, 64)
        logit[30] += 0.5
        m[30] += 4.0
        pairs.append((logit, m))
        events.append([30])
    net = Prepared()
    out = choose_matched_gain(net, {"user": _set(pairs, events)}, None)  # type: ignore[arg-type]
    rows = out["candidates"]
    assert all(r["mean_auc"] is None for r in rows)
    best = max(r["operating_point"]["f1"] for r in rows)
    assert out["gain"] == min(r["gain"] for r in rows if r["operating_point"]["f1"] == best) > 0
    assert rows[0]["operating_point"]["f1"] < best and float(net.matched_gain) == out["gain"]
    assert out["rule"].startswith("best pooled validation event F1") and "AUC" in out["rule"]
