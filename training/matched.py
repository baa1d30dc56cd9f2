"""The gain of the deep model's matched-filter path, chosen after training on validation data.

The network trains alone (gain 0). Adding ``gain`` times the limiter + matched filter to its
logit brings the exact-shape detector's sensitivity to faint events back (the network, taught
to accept stretched events and to reject inverted copies, loses some), but the matched filter
also answers to inverted copies of oscillating shapes: an inverted `arrival` looks like one
shifted by half a period. So the gain is the one with the best mean validation AUC over the
suites among those that keep inverted copies detected at most ``INVERTED_BUDGET`` more often
than the network alone (at a 1 % false-alarm rate on event-free validation signals). A gain
of 0 removes the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from training.evaluate import roc_auc
from training.model import DeepCNN
from training.scenario import Dataset

GAINS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)
INVERTED_BUDGET = 0.05  # detection rate of inverted copies, above the network alone's
FALSE_ALARM_RATE = 0.01  # signal-level, on event-free signals: where the rates are read

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


def fused_scores(parts: Parts, gain: float) -> npt.NDArray[np.float64]:
    """Signal scores: the maximum over time of logit + gain * matched filter."""
    return np.array([float(np.max(logit + gain * m)) for logit, m in parts])


def detection_rate(scores: npt.NDArray[np.float64], empty: npt.NDArray[np.float64]) -> float:
    """Share of ``scores`` above the threshold that event-free signals exceed 1 % of the time."""
    return float(np.mean(scores > np.quantile(empty, 1 - FALSE_ALARM_RATE)))


def choose_matched_gain(
    net: DeepCNN,
    val: Mapping[str, Dataset],
    polarity_sets: PolaritySets | None,
    gains: tuple[float, ...] = GAINS,
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
    table = []
    for g in gains:
        aucs = {s: roc_auc(fused_scores(p, g), labels[s]) for s, p in val_parts.items()}
        row: dict[str, Any] = {"gain": g, "validation_auc": {s: round(v, 5) for s, v in aucs.items()}}
        row["mean_auc"] = float(np.mean(list(aucs.values())))
        if pol is not None:
            empty = fused_scores(pol["empty"], g)
            row["upright_rate"] = round(detection_rate(fused_scores(pol["upright"], g), empty), 4)
            row["inverted_rate"] = round(detection_rate(fused_scores(pol["inverted"], g), empty), 4)
        table.append(row)
    base = table[0]
    assert base["gain"] == 0.0, "the gains start with 0: the network alone"
    eligible = [
        r for r in table if pol is None or r["inverted_rate"] <= base["inverted_rate"] + INVERTED_BUDGET
    ]
    best = max(eligible, key=lambda r: (round(r["mean_auc"], 5), -r["gain"]))
    gain = float(best["gain"])
    if gain == 0.0:
        net.drop_matched_path()
    else:
        net.matched_gain.fill_(gain)
    return {
        "gain": gain,
        "rule": (
            "best mean validation AUC over the suites"
            + (
                ""
                if pol is None
                else f" among gains that keep inverted copies detected at most {INVERTED_BUDGET:.0%} "
                f"more often than the network alone (at a {FALSE_ALARM_RATE:.0%} false-alarm rate on "
                "event-free validation signals)"
            )
        ),
        "candidates": table,
    }
