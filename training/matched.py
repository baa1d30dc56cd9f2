"""The gain of the deep model's matched-filter path, chosen after training on validation data.

The network trains alone (gain 0). Adding ``gain`` times the limiter + matched filter to its
logit brings the exact-shape detector's sensitivity to faint events back (the network, taught
to accept stretched events and to reject inverted copies, loses some). A plain matched filter
also answers to inverted copies of oscillating shapes (an inverted `arrival` looks like one
shifted by half a period); the path's veto (``training.model.DeepCNN``) takes most of that
back, but not all. So the gain is the one with the best mean validation AUC over the suites
among those that detect inverted copies at most ``inverted_budget`` more often than the
network alone, both counted at the false-alarm rate on event-free signals of the network
alone's operating point (the threshold and ``min_distance`` with the best pooled validation
event F1, as the card's). Each candidate's own operating point and its rates there go into
the table too. When inverted copies count as events, the AUC alone decides. A gain of 0
removes the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from app.core.calibration import sigmoid
from training.evaluate import choose_operating_point, roc_auc, threshold_for_rate
from training.model import DeepCNN
from training.scenario import Dataset

# Up to 100: the path nearly alone (the network's logit then weighs 1 %).
GAINS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 9.0, 15.0, 30.0, 100.0)
# Detection rate of inverted copies allowed above the network alone's. Not 0: on a finite set a
# gain that changes nothing measurable still comes out above the network alone half the time.
# The standard error of the paired difference on ``GAIN_SIGNALS`` signals is 0.4-0.7 points
# for the shipped shapes.
INVERTED_BUDGET = 0.01
# Signals per suite (and per polarity set) the gain is chosen on. On 500, the validation AUCs
# of neighbouring gains differ by less than their noise, and the inverted-copy test decides on
# 1-5 signals.
GAIN_SIGNALS = 2000

Parts = list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]


@dataclass
class PolaritySets:
    """Event-free signals, and signals holding one upright or one inverted copy of the shape."""

    empty: Dataset
    upright: Dataset
    inverted: Dataset


@torch.no_grad()
def signal_parts(net: DeepCNN, signals: list[npt.NDArray[np.floating]]) -> Parts:
    """The network's per-sample logit and the matched-filter path, for each signal."""
    out = []
    for x in signals:
        logit, matched = net.parts(torch.as_tensor(np.asarray(x, dtype=np.float32))[None])
        assert matched is not None
        out.append((logit[0].numpy(), matched[0].numpy()))
    return out


def fused_curves(parts: Parts, gain: float) -> list[npt.NDArray[np.float32]]:
    """Per-sample scores as the exported graph gives them: sigmoid((logit + gain * matched) / (1 + gain))."""
    return [sigmoid((logit + gain * m) / (1.0 + gain)).astype(np.float32) for logit, m in parts]


def maxima(curves: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float64]:
    """Signal scores: each curve's maximum over time."""
    return np.array([float(c.max()) for c in curves])


def choose_matched_gain(
    net: DeepCNN,
    val: Mapping[str, Dataset],
    polarity_sets: PolaritySets | None,
    gains: tuple[float, ...] = GAINS,
    inverted_budget: float = INVERTED_BUDGET,
) -> dict[str, Any]:
    """Set ``net.matched_gain`` (or drop the path) and say how: the table goes into the card.

    ``polarity_sets``: None when inverted copies count as events (or there are none to
    generate), and then only the validation AUC decides.
    """
    net.eval()
    val_parts = {s: signal_parts(net, list(d.signals)) for s, d in val.items()}
    labels = {s: np.array([len(e) > 0 for e in d.events]) for s, d in val.items()}
    pol = (
        None
        if polarity_sets is None
        else {
            k: signal_parts(net, list(getattr(polarity_sets, k).signals))
            for k in ("empty", "upright", "inverted")
        }
    )
    pooled_events = [e for d in val.values() for e in d.events]
    table = []
    for g in gains:
        curves = {s: fused_curves(p, g) for s, p in val_parts.items()}
        aucs = {s: roc_auc(maxima(c), labels[s]) for s, c in curves.items()}
        row: dict[str, Any] = {"gain": g, "validation_auc": {s: round(v, 5) for s, v in aucs.items()}}
        # No AUC without signals of both kinds (a user's validation split may hold events in
        # every signal, or in none): the pooled event F1 at the gain's operating point decides.
        values = list(aucs.values())
        row["mean_auc"] = None if np.isnan(values).any() else float(np.mean(values))
        if pol is not None or row["mean_auc"] is None:
            pooled = [c for cs in curves.values() for c in cs]
            # min_distance: chosen with the network alone, kept for the others (7 times faster)
            distances = {"distances": (table[0]["operating_point"]["min_distance"],)} if table else {}
            threshold, distance, f1 = choose_operating_point(pooled, pooled_events, **distances)
            row["operating_point"] = {"threshold": threshold, "min_distance": distance, "f1": round(f1, 4)}
        if pol is not None:
            pc = {k: fused_curves(pol[k], g) for k in ("empty", "upright", "inverted")}
            peaks = {k: maxima(c) for k, c in pc.items()}
            for k, m in peaks.items():  # signals detected at that point
                row[f"{k}_rate"] = round(float(np.mean(m >= threshold)), 4)
            # Inverted copies detected at the false-alarm rate of the network alone's operating
            # point: operating points differ in how many event-free signals they let through,
            # and that alone moves the inverted rate; this compares like with like.
            rate = table[0]["empty_rate"] if table else row["empty_rate"]
            assert polarity_sets is not None
            at = threshold_for_rate(pc["empty"], polarity_sets.empty.events, rate)
            row["inverted_rate_at_equal_false_alarms"] = round(float(np.mean(peaks["inverted"] >= at)), 4)
        table.append(row)
    base = table[0]
    assert base["gain"] == 0.0, "the gains start with 0: the network alone"
    key = "inverted_rate_at_equal_false_alarms"
    eligible = [r for r in table if pol is None or r[key] <= base[key] + inverted_budget]
    by_f1 = base["mean_auc"] is None  # the same labels at every gain
    best = max(
        eligible,
        key=lambda r: (r["operating_point"]["f1"] if by_f1 else round(r["mean_auc"], 5), -r["gain"]),
    )
    gain = float(best["gain"])
    if gain == 0.0:
        net.drop_matched_path()
    else:
        net.matched_gain.fill_(gain)
    return {
        "gain": gain,
        "rule": (
            (
                "best pooled validation event F1, each gain at its own operating point (no "
                "validation AUC: the validation signals all hold events, or none does)"
                if by_f1
                else "best mean validation AUC over the suites"
            )
            + (
                ""
                if pol is None
                else " among gains that, with as many event-free signals detected as the network "
                "alone at its operating point (the pooled-F1 threshold), "
                + (
                    f"detect inverted copies at most {inverted_budget * 100:g} percentage "
                    + ("point" if inverted_budget * 100 == 1 else "points")
                    + " more often than it"
                    if inverted_budget
                    else "detect inverted copies no more often than it"
                )
            )
        ),
        "candidates": table,
        # how many signals decided: per suite, and in each polarity set
        "signals": {s: len(d.signals) for s, d in val.items()}
        | ({} if polarity_sets is None else {"polarity_sets": len(polarity_sets.empty.signals)}),
    }
