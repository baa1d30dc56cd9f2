"""Train a detector, export it to ONNX, evaluate the exported file, write its model card.

python -m training.train                      # the shipped default model: models/bump
python -m training.train --dry-run --out /tmp/m   # a tiny end-to-end run in seconds
python -m training.train --data my.npz --name mine  # a user's annotated data
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from app.core.model import InferenceOptions, OnnxModel
from training import evaluate as ev
from training.batches import CroppedBatches, SyntheticBatches, target_curve
from training.data import UserData, load_user_data
from training.export import export_onnx, make_card, parity_error, save_card
from training.model import ModelConfig, build_model, macs_per_sample, measure_radius
from training.report import write_report
from training.scenario import (
    BUMP,
    EVAL_SEEDS,
    TRAINING_SNR,
    VALIDATION_SEEDS,
    Dataset,
    Template,
    make_dataset,
    suites,
    training_scenario,
)


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


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def fit(net: nn.Module, batches: Any, val: dict[str, Dataset], cfg: TrainConfig) -> dict[str, Any]:
    """AdamW with warm-up and cosine decay; keeps the weights with the lowest validation loss."""
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_loss, best_state, best_step = math.inf, copy.deepcopy(net.state_dict()), 0
    history: list[dict[str, float]] = []
    bar = tqdm(range(cfg.steps), desc="train", dynamic_ncols=True, mininterval=1.0)
    running = None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        xs, ys = batches.next()
        loss = train_one_step(net, opt, xs, ys, cfg.local_weight)
        running = loss if running is None else 0.98 * running + 0.02 * loss
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            v = validate(net, val, cfg.local_weight)
            history.append({"step": step + 1, "train_loss": running, **v})
            if v["loss"] < best_loss:
                best_loss, best_state, best_step = v["loss"], copy.deepcopy(net.state_dict()), step + 1
            bar.set_postfix(
                loss=f"{running:.4f}",
                val=f"{v['loss']:.4f}",
                auc=f"{np.nanmean([x for k, x in v.items() if k.startswith('auc')]):.4f}",
            )
        elif step % 20 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    net.load_state_dict(best_state)
    return {"history": history, "best_step": best_step, "best_val_loss": best_loss}


def evaluate_exported(
    model_dir: Path,
    val: dict[str, Dataset],
    test: dict[str, Dataset],
    template: Template | None,
) -> dict[str, Any]:
    """Operating point on validation, then held-out metrics: model (ONNX) and matched filter."""
    model = OnnxModel(model_dir, InferenceOptions())
    val_curves = {s: ev.model_curves(model, d) for s, d in val.items()}
    pooled_curves = [c for s in val for c in val_curves[s]]
    pooled_events = [e for s in val for e in val[s].events]
    threshold, min_distance, val_f1 = ev.choose_operating_point(pooled_curves, pooled_events)
    results: dict[str, Any] = {}
    for suite, ds in test.items():
        curves = ev.model_curves(model, ds)
        results[suite] = {"model": ev.metrics(curves, ds.events, threshold, min_distance)}
        if template is not None:
            # The baseline's threshold: the model's false-alarm rate on this suite's
            # event-free validation signals.
            rate = ev.false_alarm_rate(val_curves[suite], val[suite].events, threshold)
            mf_val = ev.matched_filter_curves(val[suite], template)
            mf_threshold = ev.threshold_for_rate(mf_val, val[suite].events, rate)
            mf = ev.matched_filter_curves(ds, template)
            results[suite]["matched_filter"] = ev.metrics(mf, ds.events, mf_threshold, min_distance)
    n_val = sum(len(d) for d in val.values())
    return {
        "threshold": threshold,
        "min_distance": min_distance,
        "threshold_selection": (
            f"maximises pooled event F1 (±{ev.MATCH_TOLERANCE} samples) over thresholds "
            f"0.05-0.95 on {n_val} validation signals ({', '.join(val)}; seeds disjoint from "
            f"training and test); validation F1 {val_f1:.4f}"
        ),
        "min_distance_selection": "chosen jointly with the threshold from 5, 10, 15, 20, 25, 30, 40",
        "metrics": results,
    }


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="bump", help="model name (directory under --out)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--arch", choices=["deep", "single"], default="deep")
    p.add_argument("--out", type=Path, default=Path("models"), help="where models/<name>/ goes")
    p.add_argument("--data", type=Path, help="a user's annotated .npz (see README: 'Your own data')")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--eval-signals", type=int, default=TrainConfig.eval_signals)
    p.add_argument("--val-signals", type=int, default=TrainConfig.val_signals)
    p.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch threads (0: all cores)")
    p.add_argument("--local-weight", type=float, default=TrainConfig.local_weight)
    p.add_argument("--snr", type=float, nargs=2, default=TRAINING_SNR, help="training SNR range")
    d = ModelConfig()
    p.add_argument("--first-kernel", type=int, default=d.first_kernel, help="deep: first conv length")
    p.add_argument("--mean-window", type=int, default=d.mean_window, help="normalisation: mean window")
    p.add_argument("--scale-window", type=int, default=d.scale_window, help="normalisation: scale window")
    p.add_argument("--scale-stride", type=int, default=d.scale_stride, help="normalisation: scale blocks")
    p.add_argument("--channels", type=int, nargs="+", default=d.channels, help="deep: channels per level")
    p.add_argument("--decoder", type=int, nargs="+", default=d.decoder, help="deep: decoder channels")
    p.add_argument("--dry-run", action="store_true", help="tiny end-to-end run: seconds, not minutes")
    a = p.parse_args(argv)

    cfg = TrainConfig(
        name=a.name,
        version=a.version,
        seed=a.seed,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        eval_signals=a.eval_signals,
        val_signals=a.val_signals,
        local_weight=a.local_weight,
        threads=a.threads,
        model=ModelConfig(
            arch=a.arch,
            first_kernel=a.first_kernel,
            mean_window=a.mean_window,
            scale_window=a.scale_window,
            scale_stride=a.scale_stride,
            channels=a.channels,
            decoder=a.decoder,
        ),
    )
    if a.dry_run:
        cfg.steps, cfg.batch_size, cfg.eval_every, cfg.warmup = 20, 8, 10, 5
        cfg.lengths, cfg.val_signals, cfg.eval_signals = (256, 384), 24, 40
    if a.threads:
        torch.set_num_threads(a.threads)
    set_seed(cfg.seed)
    started = time.time()

    template: Template | None
    user: UserData | None = None
    if a.data is not None:
        user = load_user_data(a.data, seed=cfg.seed)
        template = user.template
        batches: Any = CroppedBatches(user.train, cfg.batch_size, cfg.lengths, cfg.seed)
        val = {"user": user.val}
        test = {"user": user.test}
        data_desc: dict[str, Any] = {"source": str(a.data), **user.describe()}
    else:
        template = BUMP
        scenario = training_scenario(template, snr=(a.snr[0], a.snr[1]))
        batches = SyntheticBatches(scenario, cfg.batch_size, cfg.lengths, cfg.seed)
        ev_suites = suites(template)
        val = {s: make_dataset(sc, cfg.val_signals, VALIDATION_SEEDS[s]) for s, sc in ev_suites.items()}
        test = {s: make_dataset(sc, cfg.eval_signals, EVAL_SEEDS[s]) for s, sc in ev_suites.items()}
        data_desc = {
            "source": "synthetic: training.scenario.training_scenario (fresh signals every step)",
            "training_scenario": _describe(scenario),
            "validation": {s: {"signals": cfg.val_signals, "seed": VALIDATION_SEEDS[s]} for s in val},
            "test": {s: {"signals": cfg.eval_signals, "seed": EVAL_SEEDS[s]} for s in test},
        }

    net = build_model(cfg.model)
    log = fit(net, batches, val, cfg)
    net.eval()

    model_dir = a.out / cfg.name
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = model_dir / "model.onnx"
    export_onnx(net, onnx_path)
    parity = parity_error(net, onnx_path)
    if parity > 1e-4:
        raise SystemExit(f"parity check failed: torch vs onnxruntime differ by {parity:.2e} > 1e-4")
    radius = measure_radius(net)
    alignment = int(getattr(net, "alignment", 1))
    labels = [user.label] if user is not None else ["bump"]
    common: dict[str, Any] = dict(
        name=cfg.name,
        version=cfg.version,
        description=(
            f"{'Deep fully convolutional' if cfg.model.arch == 'deep' else 'Single-layer'} 1-D CNN "
            f"detector for the '{labels[0]}' shape: per-sample probability that an event is "
            "centred at each sample; normalisation (local mean and local first-difference "
            "scale) is inside the graph."
        ),
        labels=labels,
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
            "history": log["history"],
            "dry_run": a.dry_run,
        },
    )
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
    result = evaluate_exported(model_dir, val, test, template)
    common["training"]["seconds"] = round(time.time() - started, 1)
    card = make_card(model_dir, **common, **result)
    save_card(model_dir, card)
    print(
        f"wrote {model_dir} ({onnx_path.stat().st_size / 1e3:.0f} kB, "
        f"{card.macs_per_sample:.0f} MAC/sample, parity {parity:.1e})"
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
    # The report reuses this run's held-out sets; a dry run's are tiny, so it takes seconds.
    write_report(model_dir, data=test, gallery=4 if a.dry_run else 8)
    return model_dir


def _describe(scenario: Any) -> dict[str, Any]:
    d = asdict(scenario)
    d.pop("template", None)
    return d


if __name__ == "__main__":
    main()
