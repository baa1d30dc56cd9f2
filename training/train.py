"""Train a detector, export it to ONNX, evaluate the exported file, write its model card.

python -m training.train                      # the shipped default model: models/bump
python -m training.train --dry-run --out /tmp/m   # a tiny end-to-end run in seconds
python -m training.train --data my.npz --name mine  # a user's annotated data
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from app.core.calibration import MonotoneMap
from app.core.card import MODEL_FILE, NAME_PATTERN, VERSION_PATTERN, Card, CardError, load_card
from app.core.model import InferenceOptions, OnnxModel, detections
from training import calibrate as cal
from training import evaluate as ev
from training.batches import CroppedBatches, SyntheticBatches, target_curve
from training.cli import threads_problem
from training.data import DataError, UserData, load_user_data
from training.export import (
    export_onnx,
    load_weights,
    make_card,
    parity_error,
    polarity_ambiguity,
    save_card,
)
from training.matched import GAIN_SIGNALS, INVERTED_BUDGET, PolaritySets, choose_matched_gain
from training.model import (
    DeepCNN,
    ModelConfig,
    build_model,
    init_from_template,
    macs_per_sample,
    measure_radius,
)
from training.report import write_report
from training.scenario import (
    BUMP,
    EVAL_SEEDS,
    POLARITY_AMBIGUOUS,
    TRAINING_SNR,
    VALIDATION_SEEDS,
    Dataset,
    Scenario,
    Template,
    inverted_match,
    make_dataset,
    polarity_stretch_limit,
    signal_lengths,
    suites,
    training_scenario,
)
from training.template import TemplateError, load_template

# Seeds of the calibration sets drawn from the training distribution: one to fit the maps,
# one held out to measure them. Disjoint from the suites' seeds and from training.
CALIBRATION_SEEDS = {"fit": 3001, "held_out": 3002}
# Seeds of the polarity check (one set, upright and inverted) and of the polarity sets the
# matched-filter gain is chosen on (event-free signals; the next seed: one event each).
POLARITY_CHECK_SEED = 4001
POLARITY_SETS_SEED = 4101
ECE_GOAL = 0.02
MAX_FIRST_KERNEL = 1025
# The reference bump's architecture where the defaults differ (`bump` 1.5.0, see README, "The
# models"): 16 channels everywhere, decoder convolutions of 3. A template's or a user's data
# keep the general defaults: `arrival` with 16 channels everywhere missed four of #2's goals.
BUMP_ARCHITECTURE: dict[str, Any] = {"channels": [16, 16, 16], "decoder": [16, 16], "decoder_kernel": 3}


CALIBRATION_SIGNALS = (4000, 12000)  # signals per calibration set: the fewest and the most
CALIBRATION_SAMPLES = 24_000_000  # samples per calibration set, at most, above the fewest signals

# What --dry-run shrinks, each unless given on the command line (TrainConfig field: value; the
# option has the field's name; --budget gives the steps too). It also validates every 10 steps
# and trains on short crops.
DRY_RUN: dict[str, Any] = {
    "steps": 20,
    "batch_size": 8,
    "val_signals": 24,
    "eval_signals": 40,
    "calibration_signals": 80,
    "gain_signals": 24,
    "max_minutes": None,  # no timing of the first steps
}


@dataclass
class TrainConfig:
    name: str = "bump"
    version: str = "1.0.0"
    seed: int = 1234
    steps: int = 6000
    batch_size: int = 64
    lengths: tuple[int, int] = (384, 1024)  # training crop length, uniform per batch
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    local_weight: float = 10.0  # weight of the per-sample localisation loss
    threads: int = 1  # torch threads; 1 makes the result independent of the machine's cores
    eval_every: int = 250
    val_signals: int = 500  # per suite, for validation and the operating point
    eval_signals: int = 2000  # per suite, held out
    gain_signals: int = GAIN_SIGNALS  # per suite, validation signals the matched-filter gain is chosen on
    # From the training distribution: to fit the maps, and again held out to measure them (the
    # command line's default: ``calibration_count``, fewer for long templates)
    calibration_signals: int = CALIBRATION_SIGNALS[1]
    minutes: float | None = None  # a time budget for the training loop (then steps is an outcome)
    max_minutes: float | None = 18.0  # steps that would take longer switch to this time budget
    schedule: str = "steps"  # "steps" or "time": what the run's schedule followed
    model: ModelConfig = field(default_factory=ModelConfig)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, local_weight: float) -> torch.Tensor:
    """Signal-level cross-entropy on the max logit (the primer's) + per-sample localisation."""
    signal_target = (targets.amax(dim=-1) > 0.5).float()  # (B,)
    signal_loss = F.binary_cross_entropy_with_logits(logits.amax(dim=-1), signal_target)
    local_loss = F.binary_cross_entropy_with_logits(logits, targets)
    return signal_loss + local_weight * local_loss


def train_one_step(
    net: nn.Module, opt: torch.optim.Optimizer, xs: np.ndarray, ys: np.ndarray, local_weight: float
) -> float:
    net.train()
    logits = net(torch.from_numpy(xs))  # (B, T)
    loss = loss_fn(logits, torch.from_numpy(ys), local_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def validate(net: nn.Module, data: dict[str, Dataset], local_weight: float) -> dict[str, float]:
    """Validation loss and signal AUC per suite, with the torch model (during training)."""
    net.eval()
    out: dict[str, float] = {}
    losses = []
    for suite, ds in data.items():
        maxima = []
        for x, c in zip(ds.signals, ds.events, strict=True):
            xt = torch.from_numpy(x.astype(np.float32))[None]
            logits = net(xt)
            yt = torch.from_numpy(target_curve(x.size, c))[None]
            losses.append(float(loss_fn(logits, yt, local_weight)))
            maxima.append(float(logits.max()))
        labels = np.array([e.size > 0 for e in ds.events])
        out[f"auc_{suite}"] = ev.roc_auc(np.array(maxima), labels)
    out["loss"] = float(np.mean(losses))
    return out


def lr_at(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Linear warm-up, then cosine decay to 2 %; ``progress`` (0-1) overrides the step count."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if progress is None:
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    progress = min(max(progress, 0.0), 1.0)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def seconds_per_step(net: nn.Module, batches: Any, cfg: TrainConfig, n: int = 10) -> float:
    """Times ``n`` steps on copies of the model and the batch source: training is unchanged."""
    probe = copy.deepcopy(net)
    probe_opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    probe_batches = copy.deepcopy(batches)
    xs, ys = probe_batches.next()
    train_one_step(probe, probe_opt, xs, ys, cfg.local_weight)  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        xs, ys = probe_batches.next()
        train_one_step(probe, probe_opt, xs, ys, cfg.local_weight)
    return (time.perf_counter() - t0) / n


def choose_schedule(net: nn.Module, batches: Any, cfg: TrainConfig) -> str:
    """'steps' (reproducible) or 'time': an explicit --budget in minutes, or steps that would
    not fit in ``cfg.max_minutes`` (then the run takes that long, however fast the machine)."""
    if cfg.minutes is not None:
        return "time"
    if cfg.max_minutes is None:
        return "steps"
    per_step = seconds_per_step(net, batches, cfg)
    predicted = 1.1 * cfg.steps * per_step  # validation passes add about 10 %
    if predicted <= cfg.max_minutes * 60:
        return "steps"
    print(
        f"{cfg.steps} steps at {per_step * 1e3:.0f} ms would take {predicted / 60:.0f} min; "
        f"training for {cfg.max_minutes:g} min instead (--budget sets steps or minutes)"
    )
    cfg.minutes = cfg.max_minutes
    return "time"


def fit(net: nn.Module, batches: Any, val: dict[str, Dataset], cfg: TrainConfig) -> dict[str, Any]:
    """AdamW with warm-up and cosine decay; keeps the weights with the lowest validation loss.

    The schedule runs over ``cfg.steps`` steps, or over ``cfg.minutes`` of wall time (progress
    = elapsed / budget, so the run ends on time with the learning rate decayed).
    """
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_loss, best_state, best_step = math.inf, copy.deepcopy(net.state_dict()), 0
    history: list[dict[str, float]] = []
    cfg.schedule = choose_schedule(net, batches, cfg)
    budget = None if cfg.minutes is None else cfg.minutes * 60.0
    bar = tqdm(
        total=cfg.steps if budget is None else int(budget),
        desc="train",
        unit="step" if budget is None else "s",
        dynamic_ncols=True,
        mininterval=1.0,
    )
    running = None
    started = time.perf_counter()
    step = 0
    while True:
        progress = None if budget is None else (time.perf_counter() - started) / budget
        if (step >= cfg.steps) if budget is None else (progress is not None and progress >= 1.0):
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, progress)
        xs, ys = batches.next()
        loss = train_one_step(net, opt, xs, ys, cfg.local_weight)
        running = loss if running is None else 0.98 * running + 0.02 * loss
        step += 1
        last = step >= cfg.steps if budget is None else time.perf_counter() - started >= budget
        if step % cfg.eval_every == 0 or last:
            v = validate(net, val, cfg.local_weight)
            history.append({"step": step, "train_loss": running, **v})
            if v["loss"] < best_loss:
                best_loss, best_state, best_step = v["loss"], copy.deepcopy(net.state_dict()), step
            # A validation set without event-free signals (or without events) has no AUC.
            aucs = [x for k, x in v.items() if k.startswith("auc") and math.isfinite(x)]
            bar.set_postfix(
                loss=f"{running:.4f}",
                val=f"{v['loss']:.4f}",
                auc=f"{np.mean(aucs):.4f}" if aucs else "-",
            )
        elif step % 20 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
        bar.update(1 if budget is None else max(0, int(time.perf_counter() - started) - bar.n))
    bar.close()
    cfg.steps = step
    net.load_state_dict(best_state)
    return {"history": history, "best_step": best_step, "best_val_loss": best_loss}


def evaluate_exported(
    model_dir: Path,
    card_fields: dict[str, Any],
    val: dict[str, Dataset],
    test: dict[str, Dataset],
    calibration: tuple[Dataset, Dataset, str],
    template: Template | None,
    polarity: bool,
) -> dict[str, Any]:
    """Operating point, calibration, then held-out metrics of the exported file as it ships.

    1. The operating point (threshold, min_distance) on the raw validation curves.
    2. Calibration maps fitted on ``calibration[0]``; the card is rewritten with them and the
       model reloaded, so that everything after runs through the service's code.
    3. Held-out metrics per suite for the model and the matched filter; expected calibration
       error before and after, on ``calibration[1]`` (the training distribution) and per suite.
    """
    model = OnnxModel(model_dir, InferenceOptions())
    raw_val = {s: ev.model_curves(model, d) for s, d in val.items()}
    pooled_curves = [c for s in val for c in raw_val[s]]
    pooled_events = [e for s in val for e in val[s].events]
    raw_threshold, min_distance, val_f1 = ev.choose_operating_point(pooled_curves, pooled_events)

    fit_set, held_set, cal_source = calibration
    fit_curves = ev.model_curves(model, fit_set)
    signal_map, signal_note = _fit_or_identity(*cal.signal_samples(fit_curves, fit_set.events))
    peak_map, peak_note = _fit_or_identity(*cal.peak_samples(fit_curves, fit_set.events, min_distance))
    # Three significant digits, kept inside (0, 1).
    threshold = min(max(float(f"{float(peak_map(raw_threshold)):.3g}"), 1e-6), 1 - 1e-6)
    method = (
        "isotonic regression (pool adjacent violators) on the logit of the raw score, "
        "interpolated linearly between block means; signal: curve maximum vs 'holds an event'; "
        f"peak: peaks with raw score >= {cal.PEAK_FLOOR} vs 'matches a true event within "
        f"±{ev.MATCH_TOLERANCE} samples'"
    )
    calibration_card: dict[str, Any] = {
        "signal": signal_map.to_dict(),
        "peak": peak_map.to_dict(),
        "method": method,
        "fit_data": f"{len(fit_set)} signals of {cal_source}",
        **({"not_fitted": [n for n in (signal_note, peak_note) if n]} if signal_note or peak_note else {}),
    }
    n_val = sum(len(d) for d in val.values())
    operating = {
        "threshold": threshold,
        "min_distance": min_distance,
        "threshold_selection": (
            f"maximises pooled event F1 (±{ev.MATCH_TOLERANCE} samples) over raw thresholds "
            f"0.05-0.999 on {n_val} validation signals ({', '.join(val)}; "
            f"{'a split of the data set apart' if 'user' in val else 'seeds disjoint'} from "
            f"training and test), validation F1 {val_f1:.4f} at raw score {raw_threshold:g}; "
            "expressed on the calibrated peak-probability scale"
        ),
        "min_distance_selection": "chosen jointly with the threshold from 5, 10, 15, 20, 25, 30, 40",
    }
    save_card(
        model_dir,
        make_card(model_dir, **card_fields, **operating, calibration={**calibration_card, "ece": {}}),
    )
    model = OnnxModel(model_dir, InferenceOptions())  # now with the card's calibration
    # The operating point that ships: the card's rounded threshold, mapped back to the raw scale
    # as the service maps it (``detections``), not the unrounded one chosen above.
    shipped_raw_threshold = model.card.calibrator.peak.raw_threshold(threshold)

    def ece(data: Dataset, curves: ev.Curves) -> dict[str, Any]:
        shipped = detections(curves, threshold, min_distance, calibrator=model.card.calibrator)
        sig_raw, has_event = cal.signal_samples(curves, data.events)
        peak_raw, hit = cal.peak_samples(curves, data.events, min_distance)
        peak_after = model.card.calibrator.peak(peak_raw)
        reported = peak_after >= threshold
        return {
            "signal": {
                "before": cal.reliability(sig_raw, has_event),
                "after": cal.reliability([d.probability for d in shipped], has_event),
            },
            "peak": {
                "before": cal.reliability(peak_raw, hit),
                "after": cal.reliability(peak_after, hit),
            },
            # Only the peaks the service reports at the card's threshold.
            "reported_peak": {
                "before": cal.reliability(peak_raw[reported], hit[reported]),
                "after": cal.reliability(peak_after[reported], hit[reported]),
            },
        }

    results: dict[str, Any] = {}
    per_suite: dict[str, Any] = {}
    for suite, ds in test.items():
        # What the service answers: app.core.model.detections on the exported file's curves.
        shipped, raw = ev.shipped_metrics(model, ds, threshold, min_distance)
        results[suite] = {"model": shipped}
        per_suite[suite] = _ece_summary(ece(ds, raw))
        if template is not None:
            # The baseline's threshold: the model's false-alarm rate on this suite's
            # event-free validation signals at the shipped threshold; without any (a user's
            # recordings may all hold events), the best validation event F1, as the model's.
            mf_val = ev.matched_filter_curves(val[suite], template, polarity)
            how: dict[str, str] = {}
            if any(e.size == 0 for e in val[suite].events):
                rate = ev.false_alarm_rate(raw_val[suite], val[suite].events, shipped_raw_threshold)
                mf_threshold = ev.threshold_for_rate(mf_val, val[suite].events, rate)
            else:
                mf_threshold = ev.best_f1_threshold(mf_val, val[suite].events, min_distance)
                how["threshold_selection"] = (
                    f"best validation event F1 at min_distance {min_distance} (the validation "
                    "signals all hold events: no false-alarm rate to match)"
                )
            mf = ev.matched_filter_curves(ds, template, polarity)
            results[suite]["matched_filter"] = {
                **ev.metrics(mf, ds.events, mf_threshold, min_distance),
                **how,
            }
    held = ece(held_set, ev.model_curves(model, held_set))
    calibration_card["ece"] = {
        "bins": cal.BINS,
        "goal": ECE_GOAL,
        "held_out_data": f"{len(held_set)} signals of {cal_source}",
        "held_out": held,
        "suites": per_suite,
        "summary": _ece_summary(held),
    }
    return {**operating, "metrics": results, "calibration": calibration_card}


def _fit_or_identity(raw: np.ndarray, outcome: np.ndarray) -> tuple[MonotoneMap, str | None]:
    """The fitted map, or the identity (and why) when the data hold only one outcome."""
    try:
        return cal.fit_map(raw, outcome), None
    except ValueError as exc:
        return MonotoneMap(), f"{exc} ({int(np.sum(outcome))} of {len(outcome)} positive): identity kept"


def _ece_summary(e: dict[str, Any]) -> dict[str, Any]:
    return {
        k: {when: round(e[k][when]["ece"], 4) for when in ("before", "after")}
        for k in ("signal", "peak", "reported_peak")
    }


def polarity_check(model_dir: Path, template: Template, polarity: bool, n: int, seed: int) -> dict[str, Any]:
    """Detection rates on white-suite signals holding one upright or one inverted event."""
    model = OnnxModel(model_dir, InferenceOptions())
    upright, inverted = one_event_datasets(template, n, seed)
    rates = {
        kind: float(np.mean([d.detected for d in model.detect(ds.signals)]))
        for kind, ds in (("upright", upright), ("inverted", inverted))
    }
    return {
        "inverted_counts_as_event": polarity,
        "signals": n,
        "detection_rate_upright": round(rates["upright"], 4),
        "detection_rate_inverted": round(rates["inverted"], 4),
        "data": f"white suite with one event per signal (seed {seed}), at the card's threshold",
    }


def inverted_template(template: Template) -> Template:
    fn = template.fn
    return Template(-template.values, template.center, None if fn is None else lambda s: -fn(s))


def one_event_datasets(template: Template, n: int, seed: int) -> tuple[Dataset, Dataset]:
    """White-suite signals holding one upright event, and the same signals with it inverted."""
    one = replace(suites(template)["white"], p_empty=0.0, max_events=1)
    inverted = replace(one, template=inverted_template(template))
    return make_dataset(one, n, seed), make_dataset(inverted, n, seed)


def polarity_identifiability(template: Template, scenario: Scenario) -> dict[str, Any]:
    """Whether an inverted copy can be told from an event under ``scenario``'s stretches."""
    stretch = scenario.stretch if scenario.stretch is not None and scenario.p_stretch > 0 else None
    match, at = inverted_match(template, stretch)
    return {
        "inverted_match": round(match, 4),
        "at_stretch": round(at, 3),
        "threshold": POLARITY_AMBIGUOUS,
        "identifiable": match < POLARITY_AMBIGUOUS,
        "decoys": scenario.p_inverted > 0,
    }


def polarity_warning(info: dict[str, Any], veto: float) -> str:
    """What training says when the polarities cannot be told apart, what it does about it (unless
    the user asked for decoys or a veto), and what the user can do."""
    limit = info["stretch_limit"]
    if limit is None:
        remedy = "Even unstretched events do not keep them apart."
    elif limit == 0:
        remedy = (
            "Only unstretched events keep them apart: if yours are never stretched, "
            "give --scenario p_stretch=0."
        )
    else:
        remedy = (
            f"Events stretched by at most {limit:.0%} keep them apart: if yours never stretch more, "
            f"give --scenario stretch={1 - limit:g},{1 + limit:g}."
        )
    return (
        f"{polarity_ambiguity(info)}, so the model will detect inverted copies too. Training "
        + ("with inverted decoys (as asked)" if info["decoys"] else "without inverted decoys")
        + (" and with the path's veto (as asked). " if veto else " and without the path's veto. ")
        + f"{remedy} If inverted copies are events, give --polarity."
    )


def polarity_sets(template: Template, n: int, seed: int) -> PolaritySets:
    """Validation signals for the matched-filter gain: white-suite noise, one upright event,
    one inverted copy (seeds ``seed`` and ``seed`` + 1; not the polarity check's)."""
    upright, inverted = one_event_datasets(template, n, seed + 1)
    noise = make_dataset(replace(suites(template)["white"], p_empty=1.0), n, seed)
    return PolaritySets(empty=noise, upright=upright, inverted=inverted)


def held_out_seeds() -> dict[int, str]:
    """The seeds of the generated sets that are not training data, and what each one draws.

    Training draws its signals from ``default_rng(--seed)``: with one of these seeds it would
    draw the same noise as that set, and the set would no longer be held out.
    """
    seeds = {seed: f"the held-out {suite} suite" for suite, seed in EVAL_SEEDS.items()}
    seeds |= {seed: f"the {suite} validation suite" for suite, seed in VALIDATION_SEEDS.items()}
    seeds |= {seed: f"the calibration set ({use})" for use, seed in CALIBRATION_SEEDS.items()}
    seeds[POLARITY_CHECK_SEED] = "the polarity check"
    seeds[POLARITY_SETS_SEED] = "the polarity sets (event-free signals)"
    seeds[POLARITY_SETS_SEED + 1] = "the polarity sets (one event each)"
    return seeds


def parse_budget(text: str) -> tuple[int | None, float | None]:
    """'3000' -> 3000 steps; '10m' or '10min' -> 10 minutes."""
    t = text.strip().lower()
    try:
        if t.endswith(("min", "m")):
            minutes = float(t.removesuffix("min").removesuffix("m"))
            if 0 < minutes < math.inf:
                return None, minutes
        elif int(t) > 0:
            return int(t), None
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"--budget {text!r}: give steps (3000) or minutes (10m)")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """--scenario KEY=VALUE pairs -> Scenario fields, typed like the field's default."""
    defaults = {f.name: getattr(Scenario(), f.name) for f in fields(Scenario) if f.name != "template"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key == "polarity":
            raise SystemExit(f"--scenario {item!r}: give --polarity instead")
        if not sep or key not in defaults:
            raise SystemExit(
                f"--scenario {item!r}: expected KEY=VALUE with KEY one of "
                f"{', '.join(sorted(k for k in defaults if k != 'polarity'))}"
            )
        default = defaults[key]
        try:
            if isinstance(default, tuple) or key in ("stretch", "inverted_snr"):
                parts = [float(v) for v in value.replace(":", ",").split(",")]
                if len(parts) != 2 or parts[0] > parts[1]:
                    raise ValueError("give LO,HI")
                out[key] = (int(parts[0]), int(parts[1])) if key == "length" else tuple(parts)
            elif isinstance(default, bool):
                out[key] = value.lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                out[key] = int(value)
            else:
                out[key] = float(value)
        except ValueError as exc:
            raise SystemExit(f"--scenario {item!r}: {exc}") from None
        problem = scenario_value_problem(key, out[key])
        if problem:
            raise SystemExit(f"--scenario {item!r}: {problem}")
    return out


def scenario_value_problem(key: str, value: Any) -> str | None:
    """What is wrong with a scenario value (None: nothing), for ``--scenario KEY=VALUE``."""
    values = value if isinstance(value, tuple) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        return "give finite numbers"
    if key.startswith("p_") and not 0 <= value <= 1:
        return "give a share between 0 and 1"
    if key in ("max_events", "spike_every") and not value > 0:
        return "give a positive number"
    if key in ("length", "stretch", "drift_period") and not min(values) > 0:
        return "give positive numbers"
    if (
        key in ("snr", "noise", "min_spacing", "inverted_snr", "spike_magnitude", "drift_amplitude")
        and min(values) < 0
    ):
        return "give non-negative numbers"
    return None


def scenario_room_problem(scenario: Scenario, crops: tuple[int, int]) -> str | None:
    """Whether the shortest signal (or training crop) holds ``max_events`` events, ``spacing``
    apart, of the whole template (None: it does)."""
    size = scenario.template.values.size
    need = size + (scenario.max_events - 1) * scenario.spacing
    shortest = min(scenario.length[0], crops[0])
    if shortest >= need:
        return None
    return (
        f"signals of {shortest} samples are too short for {scenario.max_events} events of the "
        f"{size}-sample template, {scenario.spacing} apart ({need} samples); give "
        "--scenario length=LO,HI with a longer LO, or fewer max_events"
    )


def default_first_kernel(template: Template | None) -> int:
    """The deep model's first convolution holds the whole template centred on its event
    (odd, at most ``MAX_FIRST_KERNEL``); 41 without a template."""
    if template is None:
        return ModelConfig().first_kernel
    reach = max(template.center, template.values.size - 1 - template.center)
    return min(2 * reach + 1, MAX_FIRST_KERNEL)


def calibration_count(template: Template | None) -> int:
    """Signals in each calibration set (the fit one and the held-out one).

    About 10 000 peaks are reported on 12 000 signals of 256-2048 samples: a perfectly
    calibrated model then measures an ECE of 0.010 (median; 0.017 on 4000 signals), so the 0.02
    goal is not decided by chance. Long templates make long signals, and scoring 2 x 12 000 of
    them would take minutes (a 1025-sample template: 9200 samples per signal, 1 M samples/s),
    so the sets are capped at 24 M samples each, but never below 4000 signals.
    """
    lo, hi = signal_lengths(template or BUMP)
    fewest, most = CALIBRATION_SIGNALS
    return int(min(most, max(fewest, CALIBRATION_SAMPLES // ((lo + hi) // 2))))


def crop_lengths(template: Template | None) -> tuple[int, int]:
    """Training crops: 384-1024 samples, longer for templates over 96 samples."""
    n = 0 if template is None else template.values.size
    return max(384, 4 * n), max(1024, 8 * n)


def output_problem(model_dir: Path) -> str | None:
    """Why the model directory could not be written (None: it could), checked before training:
    the export, after training, would otherwise end in a traceback."""
    if model_dir.exists() and not model_dir.is_dir():
        return f"{model_dir} is a file, not a directory"
    existing = model_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--name",
        default="bump",
        help="model name (directory under --out); with --template or --data, give one: bump is the "
        "reference model's",
    )
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--arch", choices=["deep", "single"], default="deep")
    p.add_argument("--out", type=Path, default=Path("models"), help="where models/<name>/ goes")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path, help="a user's annotated .npz (see README: 'Your own data')")
    src.add_argument(
        "--template", type=Path, help="a template (.csv or .npy, 5-1025 samples): train on generated data"
    )
    p.add_argument(
        "--center",
        type=int,
        help="the --template's event sample (default: largest |value|; with --data, the data file's "
        "template_center)",
    )
    p.add_argument(
        "--label",
        help="the shape's label in the card (default: with --data, the file's label, else 'event'; "
        "otherwise the model name)",
    )
    p.add_argument("--description", help="when to use this model: goes into the card")
    p.add_argument(
        "--polarity", action="store_true", help="an inverted copy of the shape counts as an event too"
    )
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a training-scenario default, e.g. p_spikes=0.2 or stretch=0.9,1.1 (repeatable)",
    )
    p.add_argument(
        "--budget",
        type=parse_budget,
        help="training length: steps (3000) or minutes (10m); not with --steps or --max-minutes",
    )
    p.add_argument("--steps", type=int, help=f"training steps (default {TrainConfig.steps})")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="if --steps would take longer (timed at the start), train for this many minutes "
        f"(default {TrainConfig.max_minutes:g}; 0: off)",
    )
    p.add_argument("--batch-size", type=int, help=f"default {TrainConfig.batch_size}")
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument(
        "--eval-signals",
        type=int,
        help=f"held-out test signals per suite (default {TrainConfig.eval_signals}; generated data only)",
    )
    p.add_argument(
        "--val-signals",
        type=int,
        help=f"validation signals per suite (default {TrainConfig.val_signals}; generated data only)",
    )
    p.add_argument(
        "--gain-signals",
        type=int,
        help="deep: validation signals per suite (and per polarity set) to choose the matched-filter gain "
        f"on (default {TrainConfig.gain_signals}; generated data only)",
    )
    p.add_argument(
        "--calibration-signals",
        type=int,
        default=None,
        help="signals in each calibration set (default: 12 000, fewer for long templates, at least 4000; "
        "generated data only)",
    )
    p.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch threads (0: all cores)")
    p.add_argument("--local-weight", type=float, default=TrainConfig.local_weight)
    p.add_argument(
        "--snr",
        type=float,
        nargs=2,
        help=f"training SNR range (default {TRAINING_SNR[0]:g} {TRAINING_SNR[1]:g})",
    )
    d = ModelConfig()
    p.add_argument(
        "--first-kernel",
        type=int,
        help="deep: first conv length (default: spans the template centred on its event, odd)",
    )
    p.add_argument(
        "--kernel-size",
        type=int,
        default=d.kernel_size,
        help=f"deep: the other convolutions' length, odd (default {d.kernel_size})",
    )
    p.add_argument(
        "--decoder-kernel",
        type=int,
        help="deep: the decoder's convolutions' length, odd (default: --kernel-size; the reference "
        f"bump: {BUMP_ARCHITECTURE['decoder_kernel']})",
    )
    p.add_argument("--mean-window", type=int, default=d.mean_window, help="normalisation: mean window")
    p.add_argument(
        "--matched-mean-window",
        type=int,
        default=d.matched_mean_window,
        help="deep: the matched-filter path's mean window (0: no matched-filter path)",
    )
    p.add_argument(
        "--matched-clip",
        type=float,
        default=d.matched_clip,
        help="deep: the matched-filter path's limiter (noise sigmas)",
    )
    p.add_argument(
        "--matched-veto",
        type=float,
        default=None,
        help="deep: how hard the path is vetoed where an inverted copy fits better nearby (0: no veto; "
        f"default {d.matched_veto}, or 0 when the template's polarity cannot be told apart)",
    )
    p.add_argument(
        "--matched-veto-margin",
        type=float,
        default=d.matched_veto_margin,
        help="deep: by how much (noise sigmas) the inverted copy must fit better before the veto acts",
    )
    p.add_argument(
        "--inverted-budget",
        type=float,
        default=None,
        help="deep: how much more often (0-1; 0.01: one percentage point) the matched-filter path may "
        "let inverted copies through than the network alone, at its operating point's false-alarm rate "
        f"(default {INVERTED_BUDGET}; generated data whose inverted copies are not events only)",
    )
    p.add_argument("--scale-window", type=int, default=d.scale_window, help="normalisation: scale window")
    p.add_argument("--scale-stride", type=int, default=d.scale_stride, help="normalisation: scale blocks")
    p.add_argument(
        "--channels",
        type=int,
        nargs="+",
        help=f"deep: channels per level (default {_words(d.channels)}; the reference bump: "
        f"{_words(BUMP_ARCHITECTURE['channels'])})",
    )
    p.add_argument(
        "--decoder",
        type=int,
        nargs="+",
        help=f"deep: decoder channels (default {_words(d.decoder)}; the reference bump: "
        f"{_words(BUMP_ARCHITECTURE['decoder'])})",
    )
    p.add_argument(
        "--weights-from",
        type=Path,
        metavar="MODEL_DIR",
        help="skip training: take the network's weights from MODEL_DIR (a model this package "
        "trained, with the same architecture and arguments), then choose the matched-filter gain, "
        "export, evaluate and write the card and report as after training",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny end-to-end run, seconds, not minutes: "
        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in DRY_RUN.items() if v is not None)
        + ", unless given",
    )
    a = p.parse_args(argv)
    # What the command line gives: a dry run keeps it and shrinks the rest.
    explicit = {k for k in DRY_RUN if getattr(a, k) is not None} | (
        {"steps"} if a.budget is not None else set()
    )
    if a.budget is not None and (a.steps is not None or a.max_minutes is not None):
        # --budget N is N steps, kept whatever their time; --budget Nm, N minutes: either one
        # would silently override the other option.
        other = "--steps" if a.steps is not None else "--max-minutes"
        p.error(f"--budget and {other}: --budget sets the training length alone (steps or minutes); give one")
    for key in ("steps", "batch_size", "gain_signals", "max_minutes"):
        if getattr(a, key) is None:
            setattr(a, key, getattr(TrainConfig, key))

    if a.center is not None and a.template is None:
        if a.data is not None:
            p.error(
                "--center goes with --template, not --data: with --data the template's event sample is "
                "the data file's 'template_center' (see README: 'Your own data'); save it there, "
                "next to 'template', and leave --center out"
            )
        p.error("--center goes with --template (the template's event sample; default: its largest |value|)")
    for flag, k in (("--kernel-size", a.kernel_size), ("--decoder-kernel", a.decoder_kernel)):
        if k is not None and (k < 1 or k % 2 == 0):
            p.error(f"{flag} {k}: give an odd number of samples")
    if a.mean_window < 1 or a.mean_window % 2 == 0:
        p.error(f"--mean-window {a.mean_window}: give an odd number of samples")
    if a.matched_mean_window < 0 or (a.matched_mean_window and a.matched_mean_window % 2 == 0):
        p.error(f"--matched-mean-window {a.matched_mean_window}: give an odd number of samples (0: no path)")
    if not a.matched_clip > 0:
        p.error(f"--matched-clip {a.matched_clip}: give a positive number of noise sigmas")
    if not ((a.matched_veto is None or a.matched_veto >= 0) and a.matched_veto_margin >= 0):
        p.error(
            f"--matched-veto {a.matched_veto} --matched-veto-margin {a.matched_veto_margin}: "
            "give non-negative numbers (--matched-veto 0: no veto)"
        )
    if math.isnan(a.max_minutes):
        p.error(f"--max-minutes {a.max_minutes}: give a number of minutes (0: off)")
    if a.calibration_signals is not None and a.calibration_signals < 1:
        p.error(f"--calibration-signals {a.calibration_signals}: give a positive number of signals")
    if a.gain_signals < 1:
        p.error(f"--gain-signals {a.gain_signals}: give a positive number of signals")
    if a.inverted_budget is not None:
        if not 0 <= a.inverted_budget <= 1:
            p.error(f"--inverted-budget {a.inverted_budget}: give a share between 0 and 1")
        # The budget weighs inverted copies against events: it needs generated copies to count
        # and a matched-filter path to choose for; elsewhere it would be silently ignored.
        unused = (
            "--data: a data file's inverted copies are not known"
            if a.data is not None
            else "--polarity: inverted copies are events"
            if a.polarity
            else "--arch single: no matched-filter path"
            if a.arch != "deep"
            else "--matched-mean-window 0: no matched-filter path"
            if a.matched_mean_window == 0
            else None
        )
        if unused:
            p.error(f"--inverted-budget does not apply with {unused}; leave it out")
    for flag, n in (
        ("--batch-size", a.batch_size),
        ("--steps", a.steps),
        ("--eval-signals", a.eval_signals),
        ("--val-signals", a.val_signals),
    ):
        if n is not None and n < 1:
            p.error(f"{flag} {n}: give a positive number")
    if not (a.lr > 0 and math.isfinite(a.lr)):
        p.error(f"--lr {a.lr}: give a positive learning rate")
    if not (a.local_weight >= 0 and math.isfinite(a.local_weight)):
        p.error(f"--local-weight {a.local_weight}: give a non-negative weight (0: the signal loss alone)")
    if problem := threads_problem("--threads", a.threads, "all cores"):
        p.error(problem)
    if a.first_kernel is not None and (a.first_kernel < 1 or a.first_kernel % 2 == 0):
        p.error(f"--first-kernel {a.first_kernel}: give an odd number of samples")
    for flag, sizes in (("--channels", a.channels), ("--decoder", a.decoder)):
        if sizes is not None and min(sizes) < 1:
            p.error(f"{flag} {_words(sizes)}: give positive numbers of channels")
    stride, window = a.scale_stride, a.scale_window
    if stride < 1 or window < 1 or window % stride or (window // stride) % 2 == 0:
        p.error(
            f"--scale-window {window} --scale-stride {stride}: give a scale window of an odd number "
            "of scale-stride blocks (1016 = 127 x 8)"
        )
    if a.snr is not None and not (0 <= a.snr[0] <= a.snr[1] and math.isfinite(a.snr[1])):
        p.error(f"--snr {a.snr[0]} {a.snr[1]}: give 0 <= LOW <= HIGH")
    # Options of the generated data: with --data, its own splits (70 / 15 / 15) are the
    # training, validation, test and calibration sets.
    generated_only = {
        "--scenario": a.scenario,
        "--snr": a.snr,
        "--eval-signals": a.eval_signals,
        "--val-signals": a.val_signals,
        "--calibration-signals": a.calibration_signals,
        "--gain-signals": "gain_signals" in explicit,
    }
    given = [flag for flag, value in generated_only.items() if value]
    if a.data is not None and given:
        p.error(
            f"{given[0]} goes with generated data (--template, or the reference bump), not --data: "
            "with --data the data's validation and test splits are used (70 / 15 / 15)"
        )
    if not re.fullmatch(NAME_PATTERN, a.name):
        p.error(
            f"--name {a.name!r}: use 1-64 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    if not re.fullmatch(VERSION_PATTERN, a.version):
        p.error(f"--version {a.version!r}: use no slash and no white space (the service names it in URLs)")
    if a.label is not None and not a.label.strip():
        # Blank, it went into the card as the shape's name (or "" fell back to the default).
        p.error(
            f"--label {a.label!r}: give the shape's name, or leave --label out for the default ("
            + ("the data file's label, else 'event'" if a.data is not None else "the model name")
            + ")"
        )
    if a.description is not None and not a.description.strip():
        # Blank, it was appended to the card's description as it was.
        p.error(f"--description {a.description!r}: say when to use the model, or leave --description out")
    source_flag = "--data" if a.data is not None else "--template" if a.template is not None else None
    if source_flag and a.name == "bump" and (a.out / a.name).resolve() == Path("models", "bump").resolve():
        # --name defaults to bump (and make's NAME too): a template or a data file without a name
        # would overwrite the shipped reference detector with one for another shape, named bump.
        p.error(
            f"{source_flag} with --name bump: the model would replace models/bump, the reference "
            "bump detector; name yours (--name my_shape; with make: NAME=my_shape)"
        )
    problem = output_problem(a.out / a.name)
    if problem:
        p.error(f"--out {a.out} --name {a.name}: {problem}; the model goes in --out/--name: give another")
    if a.data is None and a.seed in held_out_seeds():
        p.error(
            f"--seed {a.seed} is the seed of {held_out_seeds()[a.seed]}: the training signals would "
            "share its noise; give another seed"
        )
    template: Template | None
    user: UserData | None = None
    if a.data is not None:
        try:
            user = load_user_data(a.data, seed=a.seed)
        except DataError as exc:
            raise SystemExit(f"training.train: {exc}") from None
        template = user.template
    elif a.template is not None:
        try:
            template = load_template(a.template, a.center)
        except TemplateError as exc:
            raise SystemExit(f"training.train: {exc}") from None
    else:
        template = BUMP
        # The reference bump's own recipe: `make train` trains the shipped model's architecture.
        for key, value in BUMP_ARCHITECTURE.items():
            if getattr(a, key) is None:
                setattr(a, key, value)
    for key in BUMP_ARCHITECTURE:  # otherwise the general defaults
        if getattr(a, key) is None:
            setattr(a, key, getattr(d, key))
    if a.arch == "deep" and len(a.decoder) != len(a.channels) - 1:
        p.error(
            f"--channels {_words(a.channels)} --decoder {_words(a.decoder)}: give one --decoder "
            "entry fewer than --channels (one per up-sampling step)"
        )
    overrides = parse_overrides(a.scenario)
    if "snr" in overrides:  # --scenario snr=LO,HI is --snr LO HIGH
        a.snr = list(overrides.pop("snr"))
    if a.snr is None:
        a.snr = list(TRAINING_SNR)
    if template is not None and user is None:
        room = scenario_room_problem(training_scenario(template, **overrides), crop_lengths(template))
        if room:
            p.error(f"--scenario: {room}")
    polarity_info: dict[str, Any] | None = None
    if template is not None and user is None and not a.polarity:
        polarity_info = polarity_identifiability(template, training_scenario(template, **overrides))
        if not polarity_info["identifiable"]:
            if a.inverted_budget is not None:
                p.error(
                    f"--inverted-budget does not apply: {polarity_ambiguity(polarity_info)}, so no "
                    "inverted copies are weighed against events; leave it out (or give --polarity)"
                )
            # Decoys that look like stretched events would teach the model to miss events, and
            # the veto would reject them: both stay off unless the user asks for them.
            overrides.setdefault("p_inverted", 0.0)
            if a.matched_veto is None:
                a.matched_veto = 0.0
            polarity_info["decoys"] = overrides["p_inverted"] > 0
            polarity_info["stretch_limit"] = polarity_stretch_limit(template)
            print(
                f"training.train: warning: {polarity_warning(polarity_info, a.matched_veto)}", file=sys.stderr
            )
    if a.matched_veto is None:
        a.matched_veto = ModelConfig().matched_veto
    if a.inverted_budget is None:
        a.inverted_budget = INVERTED_BUDGET
    steps, minutes = a.budget if a.budget is not None else (a.steps, None)

    cfg = TrainConfig(
        name=a.name,
        version=a.version,
        seed=a.seed,
        steps=steps if steps is not None else a.steps,
        minutes=minutes,
        # An explicit number of steps is kept; otherwise steps must fit in --max-minutes.
        max_minutes=None
        if (a.budget is not None and steps is not None) or a.max_minutes <= 0
        else a.max_minutes,
        batch_size=a.batch_size,
        lengths=crop_lengths(template),
        lr=a.lr,
        eval_signals=a.eval_signals or TrainConfig.eval_signals,
        val_signals=a.val_signals or TrainConfig.val_signals,
        gain_signals=a.gain_signals,
        calibration_signals=a.calibration_signals or calibration_count(template),
        local_weight=a.local_weight,
        threads=a.threads,
        model=ModelConfig(
            arch=a.arch,
            first_kernel=a.first_kernel or default_first_kernel(template),
            kernel_size=a.kernel_size,
            decoder_kernel=a.decoder_kernel,
            mean_window=a.mean_window,
            matched_mean_window=a.matched_mean_window if template is not None else 0,
            matched_clip=a.matched_clip,
            matched_two_sided=a.polarity,
            matched_veto=a.matched_veto,
            matched_veto_margin=a.matched_veto_margin,
            scale_window=a.scale_window,
            scale_stride=a.scale_stride,
            channels=a.channels,
            decoder=a.decoder,
        ),
    )
    if a.dry_run:
        cfg.eval_every, cfg.warmup = 10, 5
        cfg.lengths = (cfg.lengths[0], cfg.lengths[0] + 128)
        for key, value in DRY_RUN.items():
            if key not in explicit:
                setattr(cfg, key, value)
    if cfg.minutes is None:
        cfg.warmup = min(cfg.warmup, max(1, cfg.steps // 10))
    if a.threads:
        torch.set_num_threads(a.threads)
    set_seed(cfg.seed)
    started = time.time()

    if user is not None:
        # The card's config says what was used: the splits, not the generated data's counts.
        cfg.val_signals, cfg.eval_signals, cfg.calibration_signals, cfg.gain_signals = (
            len(user.val),
            len(user.test),
            len(user.val),
            len(user.val),  # the matched-filter gain is chosen on the validation split too
        )
        batches: Any = CroppedBatches(user.train, cfg.batch_size, cfg.lengths, cfg.seed)
        val = {"user": user.val}
        test = {"user": user.test}
        calibration = (
            user.val,
            user.test,
            f"{user.path} (the validation split to fit, the test split held out)",
        )
        data_desc: dict[str, Any] = user.describe()
    else:
        assert template is not None
        scenario = training_scenario(template, snr=(a.snr[0], a.snr[1]), polarity=a.polarity, **overrides)
        batches = SyntheticBatches(scenario, cfg.batch_size, cfg.lengths, cfg.seed)
        ev_suites = suites(template, polarity=a.polarity)
        val = {s: make_dataset(sc, cfg.val_signals, VALIDATION_SEEDS[s]) for s, sc in ev_suites.items()}
        test = {s: make_dataset(sc, cfg.eval_signals, EVAL_SEEDS[s]) for s, sc in ev_suites.items()}
        n_cal = cfg.calibration_signals
        calibration = (
            make_dataset(scenario, n_cal, CALIBRATION_SEEDS["fit"]),
            make_dataset(scenario, n_cal, CALIBRATION_SEEDS["held_out"]),
            "the training scenario (the distribution the model was trained for; seeds "
            f"{CALIBRATION_SEEDS['fit']} to fit, {CALIBRATION_SEEDS['held_out']} held out)",
        )
        data_desc = {
            "source": "synthetic: training.scenario.training_scenario (fresh signals every step)",
            "template_source": "the reference bump" if template is BUMP else str(a.template),
            "training_scenario": _describe(scenario),
            "suites": {s: _describe(sc) for s, sc in ev_suites.items()},
            "validation": {s: {"signals": cfg.val_signals, "seed": VALIDATION_SEEDS[s]} for s in val},
            "test": {s: {"signals": cfg.eval_signals, "seed": EVAL_SEEDS[s]} for s in test},
        }

    net = build_model(cfg.model)
    source: Card | None = None
    if a.weights_from is not None:
        source = weights_source(a.weights_from, cfg.model)
        problem = weights_data_problem(source, user, template, cfg.seed)
        if problem:
            raise SystemExit(
                f"training.train: --weights-from {a.weights_from}: {problem}; give the data (and "
                "--seed) its network was trained with"
            )
        try:
            load_weights(net, a.weights_from / MODEL_FILE)
        except ValueError as exc:
            raise SystemExit(f"training.train: --weights-from {a.weights_from}: {exc}") from None
        log = {"best_step": source.training["best_step"], "history": source.training["history"]}
        print(f"weights from {source.name} {source.version} ({a.weights_from}): not training")
    else:
        if template is not None and isinstance(net, DeepCNN):
            init_from_template(net, template)
        log = fit(net, batches, val, cfg)
    net.eval()
    matched_path = None
    if isinstance(net, DeepCNN) and net.matched is not None:
        assert template is not None
        checks = (
            polarity_sets(template, cfg.gain_signals, POLARITY_SETS_SEED)
            if polarity_info is not None and polarity_info["identifiable"]
            else None
        )
        # Validation signals again, more of them (the first cfg.val_signals are the same ones)
        gain_val = (
            val
            if user is not None
            else {s: make_dataset(sc, cfg.gain_signals, VALIDATION_SEEDS[s]) for s, sc in ev_suites.items()}
        )
        matched_path = choose_matched_gain(net, gain_val, checks, inverted_budget=a.inverted_budget)
        if net.matched is None:
            cfg.model.matched_mean_window = 0  # the card's architecture: the path was dropped
        print(f"matched-filter path: gain {matched_path['gain']}")
    train_seconds = time.time() - started

    model_dir = a.out / cfg.name
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = model_dir / "model.onnx"
    export_onnx(net, onnx_path)
    parity = parity_error(net, onnx_path)
    if parity > 1e-4:
        raise SystemExit(f"parity check failed: torch vs onnxruntime differ by {parity:.2e} > 1e-4")
    radius = measure_radius(net)
    alignment = int(getattr(net, "alignment", 1))
    if a.label:
        label = a.label
    elif user is not None:
        label = user.label
    elif template is BUMP and a.name == "bump":
        label = "bump"
    else:
        label = a.label or a.name
    kind = "Deep fully convolutional" if cfg.model.arch == "deep" else "Single-layer"
    description = (
        f"{kind} 1-D CNN detector for the '{label}' shape"
        + (" (either polarity)" if a.polarity else "")
        + ": per-sample probability that an event is centred at each sample; normalisation "
        "(local mean and local first-difference scale) is inside the graph; probabilities are "
        "calibrated by the card's maps." + (f" {a.description}" if a.description else "")
    )
    common: dict[str, Any] = dict(
        name=cfg.name,
        version=cfg.version,
        description=description,
        labels=[label],
        polarity=a.polarity,
        min_length=max(2 * alignment, 16),
        receptive_field=2 * radius + 1,
        alignment=alignment,
        template=[float(v) for v in template.values] if template is not None else None,
        template_center=template.center if template is not None else None,
        macs_per_sample=macs_per_sample(net),
        parity_max_abs_error=parity,
        training={
            "architecture": cfg.model.to_dict(),
            "config": {k: v for k, v in asdict(cfg).items() if k != "model"},
            "data": data_desc,
            "best_step": log["best_step"],
            **({"matched_path": matched_path} if matched_path is not None else {}),
            **({"polarity": polarity_info} if polarity_info is not None else {}),
            "history": log["history"],
            "dry_run": a.dry_run,
            "training_loop_seconds": round(train_seconds, 1),
        },
    )
    if source is not None:
        # The network is the source's: its training run's time and loop; this run re-exported it.
        common["training"]["training_loop_seconds"] = source.training["training_loop_seconds"]
        common["training"]["weights_from"] = {
            "model": f"{source.name} {source.version}",
            "sha256": source.sha256,
            "why": "the same network re-exported by this version of the training code",
        }
    # A provisional card lets the service's own loader run the exported file.
    save_card(
        model_dir,
        make_card(
            model_dir,
            threshold=0.5,
            min_distance=20,
            threshold_selection="provisional",
            min_distance_selection="provisional",
            **common,
        ),
    )
    result = evaluate_exported(model_dir, common, val, test, calibration, template, a.polarity)
    card = make_card(model_dir, **common, **result)
    save_card(model_dir, card)
    if user is None and template is not None:
        n_check = min(1000, cfg.eval_signals)
        card.training["polarity_check"] = polarity_check(
            model_dir, template, a.polarity, n_check, POLARITY_CHECK_SEED
        )
    card.training["seconds"] = round(time.time() - started, 1)
    if source is not None:
        card.training["weights_from"]["seconds"] = card.training["seconds"]
        card.training["seconds"] = source.training["seconds"]  # the run that trained the network
    save_card(model_dir, card)
    print(
        f"wrote {model_dir} ({onnx_path.stat().st_size / 1e3:.0f} kB, "
        f"{card.macs_per_sample:.0f} MAC/sample, parity {parity:.1e}, {card.training['seconds']:.0f} s)"
    )
    for suite, m in result["metrics"].items():
        print(
            suite,
            {
                d: {
                    k: (round(v, 4) if isinstance(v, float) else v)
                    for k, v in x.items()
                    if k in ("auc", "f1", "loc_error_median", "loc_error_p95")
                }
                for d, x in m.items()
            },
        )
    print("calibration (ECE before -> after):", result["calibration"]["ece"]["summary"])
    if "polarity_check" in card.training:
        print("polarity:", card.training["polarity_check"])
    # The report reuses this run's held-out sets; a dry run's are tiny, so it takes seconds.
    write_report(model_dir, data=test, gallery=4 if a.dry_run else 8)
    return model_dir


def _words(values: list[int]) -> str:
    return " ".join(map(str, values))


def weights_source(model_dir: Path, arch: ModelConfig) -> Card:
    """The card of the model ``--weights-from`` names; its architecture must be ``arch``."""
    try:
        card = load_card(model_dir)
    except CardError as exc:
        raise SystemExit(f"training.train: --weights-from {model_dir}: {exc}") from None
    theirs, ours = _effective(card.training.get("architecture", {})), _effective(arch.to_dict())
    differ = sorted(k for k in ours.keys() | theirs.keys() if theirs.get(k) != ours.get(k))
    if differ:
        diffs = ", ".join(f"{k} {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ)
        raise SystemExit(
            f"training.train: --weights-from {model_dir}: another architecture ({diffs}); "
            "give the arguments its network was trained with"
        )
    return card


def weights_data_problem(
    source: Card, user: UserData | None, template: Template | None, seed: int
) -> str | None:
    """Why this run's data are not those ``source``'s network was trained on (None: they are, or
    its card does not say). With a data file, another file or seed splits it otherwise, and the
    test split would hold signals the network was trained on; with generated data, another
    template is another detector."""
    data = source.training.get("data") or {}
    theirs_user = isinstance(data.get("source"), str) and "split" in data
    if user is None:
        if theirs_user:
            return f"its network was trained on a data file ({data['source']}), not generated data"
        if source.template is not None and (
            template is None or not template.same_as(source.template, source.template_center)
        ):
            return "its network was trained for another template (the card's 'template')"
        return None
    if not theirs_user:
        return "its network was trained on generated data, not a data file"
    sha256, their_seed = data.get("sha256"), (source.training.get("config") or {}).get("seed")
    if sha256 is not None and sha256 != user.sha256:
        return f"its network was trained on another data file ({data['source']}, sha256 {sha256})"
    if their_seed is not None and their_seed != seed:
        return (
            f"its network was trained with --seed {their_seed}, which splits the data otherwise: "
            "this run's test split would hold signals it was trained on"
        )
    return None


def _effective(arch: dict[str, Any]) -> dict[str, Any]:
    """An architecture as it computes: a decoder kernel of None (or absent, in cards written
    before the option) is the other convolutions' length."""
    if arch.get("decoder_kernel") is None and "kernel_size" in arch:
        arch = {**arch, "decoder_kernel": arch["kernel_size"]}
    return arch


def _describe(scenario: Any) -> dict[str, Any]:
    d = asdict(scenario)
    d.pop("template", None)
    return d


if __name__ == "__main__":
    main()
