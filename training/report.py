"""A model's training report: one self-contained HTML page (images embedded) plus its PNGs.

python -m training.report models/bump                 # held-out sets as the card describes them
python -m training.report models/bump --signals 500   # fewer signals per suite: faster
python -m training.report models/mine --data mine.npz  # a user-data model whose file has moved

Writes ``<model_dir>/report.html`` and ``<model_dir>/report/*.png``, and adds a link to the
report to ``<model_dir>/README.md`` if it has none. Sections: training and validation curves
(the card's ``training.history``); signal-level ROC curves per held-out suite, the exported
model against the matched filter; the localisation-error histogram; a gallery of held-out
signals (hits, misses, false alarms); and the primer's walk-through on our data (two events
and a spike: the spike competes in the matched filter's output, not in the CNN's scores).

The model is run as it ships: the exported ONNX file through ``app.core.model.OnnxModel``.
Only the model directory's format is relied on (``model.onnx`` + ``card.json``).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from app.core.card import Card, CardError, load_card, sha256_file
from app.core.model import InferenceOptions, OnnxModel
from app.core.peaks import find_peaks
from training import evaluate as ev
from training.cli import threads_problem
from training.data import DataError, load_user_data
from training.export import baseline_exceptions, matched_path_kind, polarity_ambiguity
from training.scenario import BUMP, EVAL_SEEDS, Dataset, Template, make_dataset, suites

REPORT_FILE = "report.html"
IMAGE_DIR = "report"
README_FILE = "README.md"
FALLBACK_SIGNALS = 500  # per suite, when the card does not say how the held-out sets were made
GALLERY = 8
DPI = 100
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Curves = list[npt.NDArray[np.float32]]

# Colours (colour-blind safe: Okabe-Ito).
MODEL_C, MF_C, EVENT_C, MISS_C, PEAK_C, FA_C, SIGNAL_C = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#0072B2",
    "#D55E00",
    "#555555",
)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class HeldOut:
    """The held-out sets the report evaluates on, and a sentence on where they came from."""

    sets: dict[str, Dataset]
    source: str


def card_template(card: Card) -> Template | None:
    """The card's template; the reference bump (with its exact shape function) if it is that."""
    if card.template is None or card.template_center is None:
        return None
    if BUMP.same_as(card.template, card.template_center):
        return BUMP
    return Template(np.asarray(card.template, dtype=np.float64), card.template_center)


def _limit(ds: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    return Dataset(ds.signals[:n], ds.events[:n])


def held_out_sets(
    card: Card, template: Template | None, signals: int | None, data_file: Path | None = None
) -> HeldOut:
    """Rebuild the held-out sets from the card's ``training.data`` (seeds and sizes).

    Synthetic suites are regenerated from their seeds (the first ``signals`` of each set when
    given: the same signals, since they are generated in order); a user's data file is re-read
    and re-split with the training seed: from ``data_file`` if given (the file has moved), else
    from the card's ``source``, and refused (``DataError``) if its sha256 is not the card's. A
    card that records neither (an untrained test model) gets the standard suites with their
    evaluation seeds and ``FALLBACK_SIGNALS`` each.
    """
    data: dict[str, Any] = card.training.get("data") or {}
    test = data.get("test")
    scenarios = suites(template or BUMP, polarity=card.polarity)
    user_data = isinstance(data.get("source"), str) and "split" in data
    if data_file is not None and not user_data:
        raise DataError(
            f"--data {data_file}: the card's held-out sets are generated, not a data file's (the "
            "model was not trained with --data)"
        )
    if isinstance(test, dict) and test and all(s in scenarios for s in test):
        sets = {}
        for suite, spec in test.items():
            n = int(spec["signals"]) if signals is None else min(signals, int(spec["signals"]))
            sets[suite] = make_dataset(scenarios[suite], n, int(spec["seed"]))
        sizes = ", ".join(f"{s} {len(d)} (seed {test[s]['seed']})" for s, d in sets.items())
        return HeldOut(sets, f"the card's held-out suites, regenerated from their seeds: {sizes}")
    if user_data:
        seed = int((card.training.get("config") or {}).get("seed", 0))
        source, expected = data["source"], data.get("sha256")
        path = Path(source) if data_file is None else data_file
        if not path.is_file():
            raise FileNotFoundError(
                f"--data {data_file}: no such file"
                if data_file is not None
                else f"the card's test data come from {source}, which is not here; run the report "
                "where the training data are, or say where the file is now (--data FILE)"
            )
        if isinstance(expected, str):
            found = sha256_file(path)
            if found != expected:
                raise DataError(
                    f"{path}: not the file the model was trained on (sha256 {found}, the card's "
                    f"{expected}): its test split would not be the card's; give that file (--data FILE)"
                )
            checked = f"sha256 {expected[:12]}…, the card's"
        else:  # a card written before the file's sha256 was recorded
            checked = "not checked: the card records no sha256"
        # the file as it was trained on, perhaps before a misspelt key or an event-free split was refused
        user = load_user_data(path, seed=seed, check_keys=False, check_splits=False)
        test_set = _limit(user.test, signals)
        return HeldOut(
            {"user": test_set}, f"the test split of {path} ({checked}; seed {seed}): {len(test_set)}"
        )
    n = FALLBACK_SIGNALS if signals is None else signals
    sets = {s: make_dataset(sc, n, EVAL_SEEDS[s]) for s, sc in scenarios.items()}
    return HeldOut(
        sets,
        f"the card records no held-out sets; the standard suites with their evaluation seeds, "
        f"{n} signals each",
    )


def signed_matches(
    peaks: IntArray, centres: IntArray, tol: int = ev.MATCH_TOLERANCE
) -> tuple[IntArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """One-to-one matches as in ``evaluate.match_pairs`` (closest pairs first, within ``tol``).

    Returns the signed errors (peak - centre) and which peaks and which centres are matched.
    """
    used_p = np.zeros(peaks.size, dtype=bool)
    used_c = np.zeros(centres.size, dtype=bool)
    errors = []
    for p, c in ev.match_pairs(peaks, centres, tol):
        used_p[p] = used_c[c] = True
        errors.append(int(peaks[p] - centres[c]))
    return np.asarray(errors, dtype=np.int64), used_p, used_c


@dataclass
class SuiteResult:
    """One suite: curves of both detectors and the matching of the model's peaks."""

    data: Dataset
    model: Curves
    mf: Curves | None
    mf_threshold: float | None
    peaks: list[IntArray]
    matched_peaks: list[npt.NDArray[np.bool_]]
    matched_events: list[npt.NDArray[np.bool_]]
    errors: IntArray
    mf_errors: IntArray | None


def evaluate_suite(
    model: OnnxModel, card: Card, suite: str, ds: Dataset, template: Template | None
) -> SuiteResult:
    curves = ev.calibrated_curves(model, ev.model_curves(model, ds))  # the card's threshold applies
    peaks, mp, me, errs = [], [], [], []
    for curve, centres in zip(curves, ds.events, strict=True):
        p = find_peaks(curve, card.threshold, card.min_distance).index
        e, used_p, used_c = signed_matches(p, centres)
        peaks.append(p)
        mp.append(used_p)
        me.append(used_c)
        errs.append(e)
    mf = mf_thr = mf_errors = None
    if template is not None:
        mf = ev.matched_filter_curves(ds, template, card.polarity)
        card_mf = card.metrics.get(suite, {}).get("matched_filter")
        if card_mf is not None:
            mf_thr = float(card_mf.threshold)
        else:  # no card metrics: match the model's false-alarm rate on this set
            rate = ev.false_alarm_rate(curves, ds.events, card.threshold)
            try:
                mf_thr = ev.threshold_for_rate(mf, ds.events, rate)
            except ValueError:
                mf_thr = None
        if mf_thr is not None:
            mf_errors = np.concatenate(
                [
                    signed_matches(find_peaks(c, mf_thr, card.min_distance).index, e)[0]
                    for c, e in zip(mf, ds.events, strict=True)
                ]
            )
    return SuiteResult(ds, curves, mf, mf_thr, peaks, mp, me, np.concatenate(errs), mf_errors)


# ---------------------------------------------------------------------------------------------
# Figures


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def roc_curve(scores: Sequence[float], labels: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray]:
    """False-positive and true-positive rates at every distinct threshold (highest first)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, lab = s[order], np.asarray(labels, dtype=bool)[order]
    n_pos, n_neg = max(int(lab.sum()), 1), max(int((~lab).sum()), 1)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tpr = np.r_[0.0, np.cumsum(lab)[last] / n_pos]
    fpr = np.r_[0.0, np.cumsum(~lab)[last] / n_neg]
    return fpr, tpr


def fig_training(history: list[dict[str, Any]], best_step: int | None) -> Figure:
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_loss, ax_auc = fig.subplots(1, 2)
    steps = [h["step"] for h in history]
    for key, label, colour in (
        ("train_loss", "training (running mean)", MF_C),
        ("loss", "validation", MODEL_C),
    ):
        ys = [h.get(key) for h in history]
        if any(y is not None for y in ys):
            ax_loss.plot(
                steps, [np.nan if y is None else y for y in ys], "o-", ms=3, label=label, color=colour
            )
    ax_loss.set(xlabel="step", ylabel="loss", title="Loss")
    auc_keys = sorted({k for h in history for k in h if k.startswith("auc_")})
    for key in auc_keys:
        ax_auc.plot(steps, [h.get(key, np.nan) for h in history], "o-", ms=3, label=key.removeprefix("auc_"))
    ax_auc.set(xlabel="step", ylabel="signal ROC AUC", title="Validation AUC per suite")
    for ax in (ax_loss, ax_auc):
        if best_step:
            ax.axvline(best_step, color="#999999", ls=":", lw=1, label=f"kept: step {best_step}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig


def fig_roc(results: dict[str, SuiteResult], card: Card) -> Figure:
    n = len(results)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4.4 * cols, 4.0 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (suite, r) in zip(axes, results.items(), strict=False):
        labels = np.array([e.size > 0 for e in r.data.events])
        maxima = np.array([float(c.max()) for c in r.model])
        # Log-scaled false-positive axis: the detectors differ at low false-alarm rates. A rate
        # of 0 is drawn at half of one event-free signal.
        floor = 0.5 / max(int((~labels).sum()), 1)
        if labels.all() or not labels.any():
            ax.text(0.5, 0.5, "needs signals with and without events", ha="center", transform=ax.transAxes)
        else:
            fpr, tpr = roc_curve(maxima, labels)
            auc = ev.roc_auc(maxima, labels)
            ax.plot(np.maximum(fpr, floor), tpr, color=MODEL_C, label=f"CNN (AUC {auc:.4f})")
            op_fpr = float(np.mean(maxima[~labels] >= card.threshold))
            op_tpr = float(np.mean(maxima[labels] >= card.threshold))
            ax.plot([max(op_fpr, floor)], [op_tpr], "o", color=MODEL_C, label=f"CNN at {card.threshold:g}")
            if r.mf is not None:
                mf_max = np.array([float(c.max()) for c in r.mf])
                fpr, tpr = roc_curve(mf_max, labels)
                auc = ev.roc_auc(mf_max, labels)
                ax.plot(
                    np.maximum(fpr, floor), tpr, color=MF_C, ls="--", label=f"matched filter (AUC {auc:.4f})"
                )
            chance = np.geomspace(floor, 1.0, 50)
            ax.plot(chance, chance, color="#bbbbbb", lw=0.8, label="chance")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xscale("log")
        ax.set(
            xlabel="false-positive rate (event-free signals, log scale)",
            ylabel="true-positive rate (signals with events)",
            title=f"{suite} ({len(r.data)} signals)",
            xlim=(floor, 1.0),
            ylim=(0.0, 1.01),
        )
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def fig_localisation(results: dict[str, SuiteResult]) -> Figure:
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    tol = ev.MATCH_TOLERANCE
    bins = np.arange(-tol - 0.5, tol + 1.5)
    model_err = np.concatenate([r.errors for r in results.values()])
    mf_parts = [r.mf_errors for r in results.values() if r.mf_errors is not None]
    centres = np.arange(-tol, tol + 1)
    width = 0.4 if mf_parts else 0.8
    h_model = np.histogram(model_err, bins)[0]
    ax.bar(
        centres - (width / 2 if mf_parts else 0),
        h_model,
        width,
        color=MODEL_C,
        label=f"CNN ({model_err.size} matched events)",
    )
    if mf_parts:
        mf_err = np.concatenate(mf_parts)
        ax.bar(
            centres + width / 2,
            np.histogram(mf_err, bins)[0],
            width,
            color=MF_C,
            label=f"matched filter ({mf_err.size})",
        )
    ax.set(
        xlabel="peak − true centre (samples)",
        ylabel="matched events",
        title=f"Localisation error, all suites (matches within ±{tol} samples)",
        xticks=centres,
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return fig


def fig_reliability(ece: dict[str, Any]) -> Figure:
    """Reliability diagrams (signal and peak probability) before and after calibration."""
    titles = {
        "signal": "Signal probability",
        "peak": "Peak probability, all candidates",
        "reported_peak": "Peak probability, reported peaks",
    }
    kinds = [k for k in titles if k in ece]
    fig = Figure(figsize=(4.5 * len(kinds), 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(kinds)))
    for ax, kind in zip(axes, kinds, strict=True):
        ax.plot([0, 1], [0, 1], color="#999999", ls=":", lw=1, label="perfect calibration")
        for when, colour, marker in (("before", MF_C, "s"), ("after", MODEL_C, "o")):
            r = ece[kind][when]
            pts = [
                (p, y)
                for p, y in zip(r["bins"]["mean_probability"], r["bins"]["observed_rate"], strict=True)
                if p is not None
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker=marker, color=colour, lw=1.2, label=f"{when}: ECE {r['ece']:.3f}")
        n = ece[kind]["after"]["samples"]
        ax.set(
            xlabel="predicted probability (bin mean)",
            ylabel="observed frequency",
            title=f"{titles[kind]} ({n} {'signals' if kind == 'signal' else 'peaks'})",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return fig


@dataclass
class Example:
    suite: str
    index: int
    kind: str  # hit | miss | false alarm | miss and false alarm | correct rejection


def classify(r: SuiteResult, i: int) -> str:
    missed = bool((~r.matched_events[i]).any())
    false_alarm = bool((~r.matched_peaks[i]).any())
    if missed and false_alarm:
        return "miss and false alarm"
    if missed:
        return "miss"
    if false_alarm:
        return "false alarm"
    return "hit" if r.data.events[i].size else "correct rejection"


def pick_gallery(results: dict[str, SuiteResult], n: int, seed: int = 0) -> list[Example]:
    """A mix of held-out signals across suites: hits, misses, false alarms, a rejection."""
    if n <= 0:
        return []
    rng = np.random.default_rng(seed)
    by_kind: dict[str, list[Example]] = {}
    per_suite: dict[str, dict[str, list[Example]]] = {}
    for suite, r in results.items():
        for i in rng.permutation(len(r.data)):
            ex = Example(suite, int(i), classify(r, int(i)))
            per_suite.setdefault(ex.kind, {}).setdefault(suite, []).append(ex)
    for kind, suites_ in per_suite.items():  # round-robin over suites: variety
        queues = list(suites_.values())
        merged = []
        while any(queues):
            for q in queues:
                if q:
                    merged.append(q.pop(0))
        by_kind[kind] = merged
    quarter = max(1, n // 4)
    quotas = [
        ("miss", quarter),
        ("false alarm", quarter),
        ("miss and false alarm", 1 if n >= 6 else 0),
        ("correct rejection", 1 if n >= 5 else 0),
    ]
    chosen: list[Example] = []
    for kind, quota in quotas:
        chosen += by_kind.get(kind, [])[:quota]
    chosen += by_kind.get("hit", [])[: max(0, n - len(chosen))]
    if len(chosen) < n:  # not enough of some kinds: fill with whatever is left
        rest = [ex for exs in by_kind.values() for ex in exs if ex not in chosen]
        chosen += rest[: n - len(chosen)]
    order = ["hit", "miss", "false alarm", "miss and false alarm", "correct rejection"]
    return sorted(chosen[:n], key=lambda e: (order.index(e.kind), e.suite, e.index))


def fig_example(r: SuiteResult, ex: Example, card: Card) -> Figure:
    x = r.data.signals[ex.index]
    curve = r.model[ex.index]
    # Fixed margins, not constrained layout: the gallery is most of the figures, drawn fast.
    fig = Figure(figsize=(8, 3.8))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.91, bottom=0.12, hspace=0.08)
    ax_x, ax_s = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    t = np.arange(x.size)
    ax_x.plot(t, x, color=SIGNAL_C, lw=0.7)
    ax_s.plot(t, curve, color=MODEL_C, lw=1.0, label="CNN score")
    ax_s.axhline(card.threshold, color="#999999", ls=":", lw=1, label=f"threshold {card.threshold:g}")
    _mark(ax_x, ax_s, r, ex.index, curve)
    ax_x.set(ylabel="signal", title=f"{ex.suite} #{ex.index}: {ex.kind} ({x.size} samples)")
    ax_s.set(xlabel="sample", ylabel="score", ylim=(-0.03, 1.03), xlim=(0, max(x.size - 1, 1)))
    for ax in (ax_x, ax_s):
        ax.grid(alpha=0.25)
    handles, labels = ax_x.get_legend_handles_labels()
    h2, l2 = ax_s.get_legend_handles_labels()
    ax_x.legend(handles + h2, labels + l2, fontsize=7, loc="upper right", ncols=3)
    return fig


def _mark(ax_x: Axes, ax_s: Axes, r: SuiteResult, i: int, curve: npt.NDArray[np.float32]) -> None:
    """True events (missed ones apart) and detected peaks (false alarms apart): one artist per kind."""
    centres, matched_c = r.data.events[i], r.matched_events[i]
    peaks, matched_p = r.peaks[i], r.matched_peaks[i]
    for where, colour, label in ((matched_c, EVENT_C, "true event"), (~matched_c, MISS_C, "missed event")):
        if where.any():
            ax_x.vlines(
                centres[where],
                0,
                1,
                transform=ax_x.get_xaxis_transform(),
                colors=colour,
                ls="--",
                lw=1.4,
                label=label,
            )
            ax_s.vlines(
                centres[where], 0, 1, transform=ax_s.get_xaxis_transform(), colors=colour, ls="--", lw=1.4
            )
    for where, colour, marker, label in (
        (matched_p, PEAK_C, "v", "detected peak"),
        (~matched_p, FA_C, "X", "false alarm"),
    ):
        if where.any():
            ax_s.plot(peaks[where], curve[peaks[where]], marker, color=colour, ms=7, ls="none")
            ax_x.plot([], [], marker, color=colour, ls="none", label=label)
            ax_x.vlines(
                peaks[where], 0, 1, transform=ax_x.get_xaxis_transform(), colors=colour, lw=0.8, alpha=0.6
            )


def primer_signal(template: Template, seed: int = 0) -> tuple[FloatArray, list[int], int]:
    """300 samples: events centred at 35 and 255 (peak height 4) and a one-sample spike of 12 at 150."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(300)
    shape = template.values / np.max(np.abs(template.values))
    centres = [35, 255]
    for c in centres:
        a = c - template.center
        for k, v in enumerate(shape):
            if 0 <= a + k < x.size:
                x[a + k] += 4.0 * v
    spike = 150
    x[spike] += 12.0
    return x, centres, spike


@dataclass
class WalkThrough:
    """The numbers the walk-through's text quotes."""

    mf_event: float  # matched filter, highest value near an event
    mf_spike: float  # matched filter, highest value near the spike
    cnn_event: float
    cnn_spike: float
    peaks: list[int]  # CNN peaks at the card's threshold


def _near(curve: npt.NDArray[np.floating], centre: int, radius: int = 5) -> float:
    return float(curve[max(centre - radius, 0) : centre + radius + 1].max())


def fig_walkthrough(model: OnnxModel, card: Card, template: Template) -> tuple[Figure, WalkThrough]:
    x, centres, spike = primer_signal(template)
    mf = ev.matched_filter(x, template)
    (curve,) = ev.calibrated_curves(model, model.scores([x]))
    peaks = find_peaks(curve, card.threshold, card.min_distance)
    fig = Figure(figsize=(8, 9), layout="constrained")
    ax_k, ax_x, ax_m, ax_s = fig.subplots(4, 1, height_ratios=[2, 3, 3, 3])
    s = np.arange(template.values.size) - template.center
    ax_k.plot(s, template.values, "o-", ms=3, color=EVENT_C)
    ax_k.set(title="1. The template (the shape we look for)", xlabel="samples from the centre")
    t = np.arange(x.size)
    ax_x.plot(t, x, color=SIGNAL_C, lw=0.8)
    ax_x.set(title=f"2. A signal: two events (centres {centres[0]}, {centres[1]}) and a spike at t = {spike}")
    ax_m.plot(t, mf, color=MF_C, lw=1.0)
    ax_m.set(title="3. Matched filter output: the spike competes with the events", ylabel="SNR units")
    ax_s.plot(t, curve, color=MODEL_C, lw=1.0)
    ax_s.axhline(card.threshold, color="#999999", ls=":", lw=1, label=f"threshold {card.threshold:g}")
    ax_s.plot(peaks.index, peaks.probability, "v", color=PEAK_C, ms=8, label="detected peaks")
    ax_s.set(
        title="4. CNN score: the spike does not compete", ylabel="score", xlabel="sample", ylim=(-0.03, 1.03)
    )
    ax_s.legend(fontsize=8, loc="upper center")
    for ax in (ax_x, ax_m, ax_s):
        for c in centres:
            ax.axvline(c, color=EVENT_C, ls="--", lw=1)
        ax.axvline(spike, color=FA_C, ls=":", lw=1)
        ax.grid(alpha=0.25)
    ax_k.grid(alpha=0.25)
    facts = WalkThrough(
        mf_event=max(_near(mf, c) for c in centres),
        mf_spike=_near(mf, spike),
        cnn_event=max(_near(curve, c) for c in centres),
        cnn_spike=_near(curve, spike),
        peaks=[int(i) for i in peaks.index],
    )
    return fig, facts


# ---------------------------------------------------------------------------------------------
# HTML


CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:60rem;
padding:1rem;color:#222}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
img{max-width:100%;height:auto;display:block;margin:.5rem 0}
table{border-collapse:collapse;font-size:.9rem;display:block;overflow-x:auto}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}th{background:#f4f4f4}
td:first-child,td:nth-child(2){text-align:left}
figure{margin:1rem 0}figcaption{font-size:.9rem;color:#555}
.note{color:#555;font-size:.9rem}
code{overflow-wrap:anywhere}
.gallery{display:grid;grid-template-columns:repeat(auto-fit,minmax(22rem,1fr));gap:1rem}
"""


@dataclass
class Image:
    name: str
    png: bytes
    alt: str

    def tag(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(self.alt)}">'


def _fmt(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}"
    return html.escape(str(v))


def metrics_table(results: dict[str, SuiteResult], card: Card) -> str:
    rows = []
    for suite, r in results.items():
        m = ev.metrics(r.model, r.data.events, card.threshold, card.min_distance)
        rows.append((suite, "CNN", m))
        if r.mf is not None and r.mf_threshold is not None:
            rows.append(
                (suite, "matched filter", ev.metrics(r.mf, r.data.events, r.mf_threshold, card.min_distance))
            )
    keys = [
        "signals",
        "events",
        "auc",
        "threshold",
        "precision",
        "recall",
        "f1",
        "loc_error_median",
        "loc_error_p95",
        "false_alarm_rate",
    ]
    head = "".join(f"<th>{k}</th>" for k in ["suite", "detector", *keys])
    body = "".join(
        "<tr>"
        + f"<td>{html.escape(s)}</td><td>{d}</td>"
        + "".join(f"<td>{_fmt(m[k])}</td>" for k in keys)
        + "</tr>"
        for s, d, m in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def matched_path_table(training: dict[str, Any]) -> str:
    """Every candidate gain of the card's ``training.matched_path`` with its validation numbers;
    the chosen one in bold."""
    path = training["matched_path"]
    rows = path["candidates"]
    suites = list(rows[0]["validation_auc"]) if rows else []
    names = {
        "empty_rate": "event-free detected",
        "upright_rate": "upright detected",
        "inverted_rate": "inverted detected",
        "inverted_rate_at_equal_false_alarms": "inverted detected, the network's false-alarm rate",
    }
    rates = [k for k in names if rows and k in rows[0]]
    operating = bool(rows) and "operating_point" in rows[0]  # with the rates, or F1 decided
    head = ["gain", "mean AUC", *(f"{s} AUC" for s in suites)]
    if operating:
        head += ["threshold (raw)", "F1"]
    head += [names[k] for k in rates]
    body = []
    for r in rows:
        aucs = [_fmt(r["validation_auc"][s]) for s in suites]
        cells = [f"{float(r['gain']):g}", _fmt(r["mean_auc"]), *aucs]
        if operating:
            op = r["operating_point"]
            cells += [_fmt(float(op["threshold"])), _fmt(op["f1"])]
        cells += [_fmt(r[k]) for k in rates]
        style = ' style="font-weight:bold"' if r["gain"] == path["gain"] else ""
        body.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = (
        "<table><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + f"</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
    return (
        f"<p>Gain {path['gain']:g} (in bold): the {html.escape(path['rule'])}. The logit is "
        f"(network + gain × path) / (1 + gain), the path {html.escape(matched_path_kind(training))}; "
        "gain 0 removes the path.</p>"
        + table
        + f'<p class="note">Validation signals{_gain_signals(path.get("signals"))}. Detection rates '
        "are read at each gain's own "
        "operating point, on event-free signals and on signals holding one upright or one inverted "
        "copy of the shape"
        + (
            "; the last column at the threshold that detects as many event-free signals as the "
            "network alone does at its operating point"
            if "inverted_rate_at_equal_false_alarms" in rates
            else ""
        )
        + ".</p>"
        + _polarity_note(training)
    )


def _gain_signals(counts: dict[str, int] | None) -> str:
    """How many validation signals the gain was chosen on, for example " (2000 per suite, 2000 in
    each polarity set)"; "" for cards that do not say."""
    if not counts:
        return ""
    suites = {k: v for k, v in counts.items() if k != "polarity_sets"}
    text = (
        f"{next(iter(suites.values()))} per suite"
        if len(set(suites.values())) == 1
        else ", ".join(f"{k} {v}" for k, v in suites.items())
    )
    if "polarity_sets" in counts:
        text += f", {counts['polarity_sets']} in each polarity set"
    return f" ({text})"


def _polarity_note(training: dict[str, Any]) -> str:
    info = training.get("polarity")
    if not info or info["identifiable"]:
        return ""
    veto = "" if training.get("architecture", {}).get("matched_veto") else "No veto and "
    limit = "no limit" if veto else "No limit"
    return f'<p class="note">{veto}{limit} on inverted copies: {html.escape(polarity_ambiguity(info))}.</p>'


def render_html(card: Card, sections: list[tuple[str, str, str]], summary: str) -> str:
    title = f"{card.name} {card.version} — training report"
    nav = "".join(f'<li><a href="#{sid}">{html.escape(heading)}</a></li>' for sid, heading, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{html.escape(h)}</h2>{content}</section>' for sid, h, content in sections
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{summary}<nav><ul>{nav}</ul></nav>{body}</body></html>\n"
    )


def link_readme(model_dir: Path) -> bool:
    """Append a link to the report to the model's README.md if it has none; True if added."""
    path = model_dir / README_FILE
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if f"({REPORT_FILE})" in text:
        return False
    line = (
        f"Report: [{REPORT_FILE}]({REPORT_FILE}) — training curves, ROC curves against the matched "
        "filter, localisation errors, a gallery of held-out signals and the primer's walk-through.\n"
    )
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    path.write_text(text + sep + line, encoding="utf-8")
    return True


# ---------------------------------------------------------------------------------------------
# Entry points


def write_report(
    model_dir: Path,
    *,
    signals: int | None = None,
    gallery: int = GALLERY,
    data: dict[str, Dataset] | None = None,
    data_file: Path | None = None,
    threads: int = 0,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Write ``report.html`` and ``report/*.png`` for ``model_dir``; returns the HTML's path.

    ``data``: the held-out sets, if the caller has them (training does); otherwise they are
    rebuilt from the card (a user's data file from ``data_file`` if given, see
    ``held_out_sets``). ``signals``: at most this many signals per suite.
    """
    started = time.perf_counter()
    say = log or (lambda _: None)
    card = load_card(model_dir)
    model = OnnxModel(model_dir, InferenceOptions(intra_op_threads=threads))
    template = card_template(card)
    if data is not None:
        held = HeldOut(
            {s: _limit(d, signals) for s, d in data.items()},
            "the held-out sets of this training run: "
            + ", ".join(f"{s} {min(len(d), signals or len(d))}" for s, d in data.items()),
        )
    else:
        held = held_out_sets(card, template, signals, data_file)
    say(f"report: evaluating {sum(len(d) for d in held.sets.values())} held-out signals")
    results = {s: evaluate_suite(model, card, s, d, template) for s, d in held.sets.items()}

    images: list[Image] = []

    def add(name: str, fig: Figure, alt: str) -> Image:
        img = Image(name, png_bytes(fig), alt)
        images.append(img)
        return img

    sections: list[tuple[str, str, str]] = []
    note = lambda text: f'<p class="note">{text}</p>'  # noqa: E731

    # Training curves.
    history = card.training.get("history") or []
    if history:
        img = add(
            "training.png",
            fig_training(history, card.training.get("best_step")),
            "training and validation curves",
        )
        content = img.tag() + note(
            "Left: training loss (running mean) and validation loss; right: validation signal-level "
            "ROC AUC per suite (torch model, during training). The dotted line marks the step whose "
            "weights were kept (lowest validation loss)."
        )
    else:
        content = note("The card has no training history (<code>training.history</code>): nothing to plot.")
    sections.append(("training", "Training and validation curves", content))

    # ROC.
    img = add("roc.png", fig_roc(results, card), "ROC curves per suite, CNN against the matched filter")
    mf_note = (
        " The matched filter correlates the template with the signal after median/MAD normalisation."
        if template is not None
        else " The card has no template: no matched-filter baseline."
    )
    content = (
        img.tag()
        + note(
            "Signal-level ROC: a signal's score is the maximum of its curve; positives are signals "
            f"with at least one event. The false-positive axis is logarithmic: the detectors differ at low "
            f"false-alarm rates. The dot is the CNN at the card's threshold.{mf_note}"
        )
        + metrics_table(results, card)
        + note(
            f"Event metrics at the card's threshold {card.threshold:g} and min_distance "
            f"{card.min_distance}; the matched filter at the card's threshold for it (the CNN's "
            f"false-alarm rate{html.escape(baseline_exceptions(card))}) when the card has one. A "
            "detection matches a true event within "
            f"±{ev.MATCH_TOLERANCE} samples."
        )
    )
    sections.append(("roc", "ROC curves: CNN against the matched filter", content))

    # The matched-filter path's gain.
    if card.training.get("matched_path"):
        sections.append(("matched", "Matched-filter path: the gain", matched_path_table(card.training)))

    # Localisation.
    img = add("localisation.png", fig_localisation(results), "histogram of localisation errors")
    sections.append(
        (
            "localisation",
            "Localisation error",
            img.tag()
            + note("Signed error of each matched detection: detected peak minus true centre, in samples."),
        )
    )

    # Calibration.
    calibration = card.calibration.model_dump() if card.calibration is not None else {}
    reliability = (calibration.get("ece") or {}).get("held_out")
    if reliability:
        img = add(
            "reliability.png",
            fig_reliability(reliability),
            "reliability diagrams before and after calibration",
        )
        per_suite = calibration["ece"].get("suites") or {}
        rows = "".join(
            f"<tr><td>{html.escape(s)}</td>"
            + "".join(
                f"<td>{v[k][w]:.4f}</td>"
                for k in ("signal", "peak", "reported_peak")
                for w in ("before", "after")
            )
            + "</tr>"
            for s, v in per_suite.items()
        )
        table = (
            "<table><thead><tr><th>held-out suite</th><th>signal ECE before</th><th>after</th>"
            "<th>peak ECE before</th><th>after</th><th>reported-peak ECE before</th><th>after</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>"
            if rows
            else ""
        )
        content = (
            img.tag()
            + note(
                f"Held-out data: {html.escape(calibration['ece'].get('held_out_data', ''))}. Each point is "
                f"one of {calibration['ece'].get('bins', 10)} equal-width bins: the mean predicted "
                "probability against the observed frequency (signals that hold an event; peaks that "
                "match a true event). Candidate peaks: every peak with a raw score of at least 0.02; "
                "reported peaks: those at or above the card's threshold. ECE: the bins' |difference| "
                "weighted by their counts. Maps "
                f"fitted on {html.escape(calibration.get('fit_data', ''))}: "
                f"{html.escape(calibration.get('method', ''))}."
            )
            + table
            + note(
                "The suites share the training distribution's prior (half the signals hold events) "
                "but not its SNR and nuisances, so their ECE tells how far the probabilities drift "
                "on data unlike the training distribution."
            )
        )
    else:
        content = note("The card has no calibration (<code>calibration.ece</code>): nothing to plot.")
    sections.append(("calibration", "Calibration: reliability diagrams", content))

    # Gallery.
    picks = pick_gallery(results, gallery)
    figures = []
    for k, ex in enumerate(picks, 1):
        img = add(
            f"gallery_{k:02d}.png",
            fig_example(results[ex.suite], ex, card),
            f"{ex.suite} signal {ex.index}: {ex.kind}",
        )
        caption = f"{html.escape(ex.suite)} #{ex.index}: {html.escape(ex.kind)}"
        figures.append(f"<figure>{img.tag()}<figcaption>{caption}</figcaption></figure>")
    content = note(
        "Held-out signals with their true events (green dashed; magenta: missed), the CNN's "
        "detected peaks (blue triangles; red crosses: false alarms) and its score curve with "
        "the threshold."
    ) + (f'<div class="gallery">{"".join(figures)}</div>' if figures else note("No signals to show."))
    sections.append(("gallery", "Gallery of held-out signals", content))

    # Walk-through.
    if template is not None:
        fig, facts = fig_walkthrough(model, card, template)
        img = add(
            "walkthrough.png", fig, "the primer's walk-through: template, signal, matched filter, CNN score"
        )
        content = img.tag() + note(
            "The primer's example on our template: 300 samples of white noise (σ = 1), two events "
            "centred at 35 and 255 (peak height 4) and a one-sample spike of height 12 at t = 150. "
            f"The matched filter's output reaches {facts.mf_spike:.1f} at the spike against "
            f"{facts.mf_event:.1f} at the events, so a threshold low enough for the events also "
            f"fires on the spike. The CNN's score reaches {facts.cnn_event:.2f} at the events and "
            f"{facts.cnn_spike:.2f} at the spike; peaks detected at the card's threshold: "
            f"{', '.join(map(str, facts.peaks)) or 'none'}."
        )
    else:
        content = note("The card has no template: the walk-through needs one.")
    sections.append(("walkthrough", "The primer's walk-through on our data", content))

    image_dir = model_dir / IMAGE_DIR
    image_dir.mkdir(exist_ok=True)
    for old in image_dir.glob("*.png"):
        if old.name not in {i.name for i in images}:
            old.unlink()
    for img in images:
        (image_dir / img.name).write_bytes(img.png)

    summary = (
        f"<p>{html.escape(card.description)}</p><ul>"
        f"<li>Model file sha256 <code>{card.sha256}</code>, card created {html.escape(card.created)}</li>"
        f"<li>Threshold {card.threshold:g}, min_distance {card.min_distance}</li>"
        f"<li>Held-out data: {html.escape(held.source)}</li>"
        f"<li>Report generated {datetime.now(UTC).isoformat(timespec='seconds')} by "
        "<code>python -m training.report</code>; the images are also in "
        f"<code>{IMAGE_DIR}/</code></li></ul>"
    )
    out = model_dir / REPORT_FILE
    out.write_text(render_html(card, sections, summary), encoding="utf-8")
    link_readme(model_dir)
    say(f"report: wrote {out} and {len(images)} images in {time.perf_counter() - started:.1f} s")
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="a model directory (model.onnx + card.json)")
    p.add_argument(
        "--signals", type=int, help="at most this many held-out signals per suite (default: the card's)"
    )
    p.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="a model trained with --data: its data file, if not where the card says (checked "
        "against the card's sha256)",
    )
    p.add_argument("--gallery", type=int, default=GALLERY, help="signals in the gallery")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    a = p.parse_args(argv)
    if a.signals is not None and a.signals < 1:
        p.error("--signals must be >= 1")
    if a.gallery < 0:
        p.error(f"--gallery {a.gallery}: give a number of signals, 0 or more (0: no gallery)")
    if problem := threads_problem("--threads", a.threads, "onnxruntime's default"):
        p.error(problem)
    try:
        return write_report(
            a.model_dir, signals=a.signals, gallery=a.gallery, data_file=a.data, threads=a.threads
        )
    except (CardError, DataError, FileNotFoundError) as exc:
        raise SystemExit(f"training.report: {exc}") from None


if __name__ == "__main__":
    main()
