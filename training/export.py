"""ONNX export, the torch-vs-onnxruntime parity check, the model card and its README."""

from __future__ import annotations

import platform
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from app.core.card import MODEL_FILE, Card, TensorSpec, sha256_file, write_card
from training.model import Exported

OPSET = 18
PARITY_LENGTHS = (64, 65, 257, 1000, 4099)
PARITY_TOLERANCE = 1e-4


def export_onnx(net: nn.Module, path: Path) -> None:
    """Write ``signal (batch, length) -> probability (batch), scores (batch, length)``."""
    wrapped = Exported(net).eval()
    example = torch.randn(2, 512)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=["signal"],
            output_names=["probability", "scores"],
            dynamic_axes={
                "signal": {0: "batch", 1: "length"},
                "probability": {0: "batch"},
                "scores": {0: "batch", 1: "length"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)


def load_weights(net: nn.Module, onnx_path: Path) -> None:
    """Set ``net``'s parameters and buffers from a ``model.onnx`` this package exported.

    The export names each initializer after the tensor it holds (``net.<name>``). Values are
    reshaped to ``net``'s shapes, so a network exported with 1-D convolutions loads into row
    convolutions (``training.model.row_conv``): the same weights, another layout.
    """
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    state = net.state_dict()
    missing = sorted(k for k in state if f"net.{k}" not in inits)
    if missing:
        raise ValueError(
            f"{onnx_path} has no weights for {missing}: was it exported with another architecture?"
        )
    for key, value in state.items():
        array = inits[f"net.{key}"]
        if array.size != value.numel():
            raise ValueError(
                f"{onnx_path}: {key} holds {array.size} values, the network needs {value.numel()}"
            )
        state[key] = torch.as_tensor(array.copy(), dtype=value.dtype).reshape(value.shape)
    net.load_state_dict(state)


def parity_error(net: nn.Module, path: Path, seed: int = 0) -> float:
    """Max |torch - onnxruntime| over probability and scores, on several lengths and scales."""
    wrapped = Exported(net).eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for i, length in enumerate(PARITY_LENGTHS):
        scale = 10.0 ** (i - 2)
        x = (torch.randn(3, length, generator=gen) + 5.0) * scale
        with torch.no_grad():
            p_t, s_t = wrapped(x)
        p_o, s_o = session.run(["probability", "scores"], {"signal": x.numpy()})
        worst = max(worst, float(np.abs(p_o - p_t.numpy()).max()), float(np.abs(s_o - s_t.numpy()).max()))
    return worst


def versions() -> dict[str, str]:
    """The software that made the model, and the CPU: training is reproducible bit for bit on
    one kind of CPU only (torch's kernels round differently on others)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "cpu": cpu_name(),
    }


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def make_card(model_dir: Path, **fields: Any) -> Card:
    """A card for ``model_dir/model.onnx``: the file's sha256 and I/O spec, plus ``fields``."""
    return Card(
        sha256=sha256_file(model_dir / MODEL_FILE),
        opset=OPSET,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        inputs=[TensorSpec(name="signal", dtype="float32", shape=["batch", "length"])],
        outputs=[
            TensorSpec(name="probability", dtype="float32", shape=["batch"]),
            TensorSpec(name="scores", dtype="float32", shape=["batch", "length"]),
        ],
        versions=versions(),
        **fields,
    )


def _fmt(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _error(v: float | None) -> str:
    """A small error as what it is: 0 when exact, else two significant digits (4e-07); at four
    decimals every error under 5e-05 read 0.0000."""
    if v is None:
        return "—"
    return "0" if v == 0 else f"{v:.2g}"


def _count(v: float | None) -> str:
    """A count kept as a float (a whole number of multiply-accumulates: 6217, not 6217.0000)."""
    if v is None:
        return "—"
    return f"{v:g}" if v != int(v) else str(int(v))


def render_readme(card: Card) -> str:
    """A human-readable summary of the card."""
    lines = [
        f"# {card.name} {card.version}",
        "",
        card.description,
        "",
        f"- Created: {card.created}",
        f"- Labels: {', '.join(card.labels)}",
        f"- Input `signal` float32 [batch, length], length >= {card.min_length}; outputs "
        "`probability` float32 [batch] and `scores` float32 [batch, length] (per-sample "
        "probability that an event is centred there).",
        f"- Receptive field: {card.receptive_field} samples; alignment {card.alignment}.",
        f"- Threshold: {card.threshold} ({card.threshold_selection})",
        f"- min_distance: {card.min_distance} ({card.min_distance_selection})",
        f"- Cost: {_count(card.macs_per_sample)} multiply-accumulates per input sample.",
        f"- Parity torch vs onnxruntime: max abs error {_error(card.parity_max_abs_error)}.",
        *_matched_path_line(card.training),
        *_weights_from_line(card.training),
        *_polarity_line(card),
        f"- sha256 of model.onnx: `{card.sha256}`",
        "",
        "## Held-out metrics",
        "",
        "Signal-level ROC AUC; event precision / recall / F1 at the threshold (a detection "
        "matches a true event within ±5 samples); localisation error |peak − centre| in samples; "
        "false-alarm rate on event-free signals. The baseline is the matched filter (template "
        "correlation after median/MAD normalisation) with its threshold set for the model's "
        "false-alarm rate on the suite's event-free validation signals" + baseline_exceptions(card) + ".",
        "",
        "| suite | detector | signals | AUC | precision | recall | F1 "
        "| loc. median | loc. p95 | false alarms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for suite, by_detector in card.metrics.items():
        for det, m in by_detector.items():
            lines.append(
                f"| {suite} | {det} | {m.signals} | {_fmt(m.auc)} | {_fmt(m.precision)} | "
                f"{_fmt(m.recall)} | {_fmt(m.f1)} | {_fmt(m.loc_error_median)} | "
                f"{_fmt(m.loc_error_p95)} | {_fmt(m.false_alarm_rate)} |"
            )
    lines += ["", "## Training", "", "```json"]
    import json

    lines += [json.dumps(card.training, indent=2), "```", "", "## Library versions", ""]
    lines += [f"- {k}: {v}" for k, v in card.versions.items()]
    return "\n".join(lines) + "\n"


def baseline_exceptions(card: Card) -> str:
    """The suites whose matched-filter threshold was chosen otherwise (a user's validation
    signals that all hold events: no false-alarm rate to match), as the card's metrics say."""
    other = {
        suite: str((by["matched_filter"].model_extra or {})["threshold_selection"])
        for suite, by in card.metrics.items()
        if "matched_filter" in by and "threshold_selection" in (by["matched_filter"].model_extra or {})
    }
    return "".join(f"; on {suite}: {how}" for suite, how in other.items())


def matched_path_kind(training: dict[str, Any]) -> str:
    """What the card's matched-filter path is, from its architecture (model README and report)."""
    arch = training.get("architecture", {})
    if arch.get("matched_two_sided"):
        return "the limiter + matched filter, two-sided (|correlation|)"
    if arch.get("matched_veto"):
        return "the limiter + matched filter, vetoed where an inverted copy fits better"
    return "the limiter + matched filter"


def polarity_ambiguity(info: dict[str, Any]) -> str:
    """Why a card's polarities cannot be told apart, from its ``training.polarity`` (model
    README, report and training's warning)."""
    return (
        f"an inverted copy of the shape fits an upright one stretched by {info['at_stretch']:.2f} "
        f"and shifted at {info['inverted_match']:.2f} of its own match, so under the training "
        "stretches the two polarities cannot be told apart"
    )


def _polarity_line(card: Card) -> list[str]:
    check = card.training.get("polarity_check")
    info = card.training.get("polarity")
    if card.polarity:
        return ["- Polarity: an inverted copy of the shape counts as an event."]
    if not check and not info:
        return []
    line = "- Polarity: an inverted copy of the shape is not an event"
    if check:
        line += f"; the model detects {check['detection_rate_inverted']:.0%} of them (polarity check)"
    if info and not info["identifiable"]:
        why = polarity_ambiguity(info)
        line += f". {why[0].upper()}{why[1:]}: trained " + (
            "with inverted decoys, as asked" if info.get("decoys") else "without inverted decoys"
        )
    return [line + "."]


def _matched_path_line(training: dict[str, Any]) -> list[str]:
    path = training.get("matched_path")
    if not path:
        return []
    if path["gain"] == 0:
        return [f"- Matched-filter path: none (gain 0 won; the rule: {path['rule']})."]
    gain, rule = path["gain"], path["rule"]
    return [
        f"- Matched-filter path: logit = (network + {gain} × path) / (1 + {gain}), the path "
        f"{matched_path_kind(training)}; the gain: {rule}."
    ]


def _weights_from_line(training: dict[str, Any]) -> list[str]:
    source = training.get("weights_from")
    if not source:
        return []
    return [
        f"- Network: the weights of {source['model']} (sha256 `{source['sha256']}`), not trained "
        "again: this version exports the same network with the current training code's graph; "
        "the training history and time below are that model's."
    ]


def write_model_readme(model_dir: Path, card: Card) -> None:
    (model_dir / "README.md").write_text(render_readme(card), encoding="utf-8")


def save_card(model_dir: Path, card: Card) -> None:
    write_card(model_dir, card)
    write_model_readme(model_dir, card)
