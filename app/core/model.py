"""A loaded model: its card, one onnxruntime session, warm-up, and detection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from app.core.calibration import IDENTITY, Calibrator
from app.core.card import CARD_FILE, MODEL_FILE, Card, CardError, load_card, read_model
from app.core.peaks import Peaks, find_peaks_flat
from app.core.windows import Float32Array, Map, WindowPlan, least_window, score_pieces


@dataclass(frozen=True, slots=True)
class Detection:
    """The result for one signal (probabilities calibrated when the card says how)."""

    probability: float
    detected: bool
    peaks: Peaks
    scores: Float32Array | None = None


@dataclass(frozen=True, slots=True)
class InferenceOptions:
    """How a model runs: serving settings, not properties of the model."""

    window: int = 65536  # samples per window for long signals
    max_batch_samples: int = 131072  # samples per onnxruntime call (bounds memory)
    intra_op_threads: int = 0  # 0: onnxruntime's default
    spinning: bool = False  # onnxruntime's threads spin between calls: lower latency, busy cores
    max_signal_length: int | None = None  # longest signal a request may send; None: no limit


def session_options(options: InferenceOptions) -> ort.SessionOptions:
    """The onnxruntime session options the service runs a model with."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads keep a core busy after each call; in a server that core is needed by the
    # event loop that parses the next request.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
    # onnxruntime's memory pattern keeps one allocation plan per input shape it has seen, never
    # freed: signals of any length (and batches of any number of rows) made RSS grow about 4 KiB
    # per new shape, without bound. Without it a call allocates from the arena as it goes:
    # about 10 µs more for a 1×1024 call, the same within noise for large batches.
    so.enable_mem_pattern = False
    return so


def check_servable(card: Card, model_dir: Path, options: InferenceOptions) -> None:
    """Raises ``CardError`` if no request the settings allow could reach the model: its
    shortest signal (the card's ``min_length``) is longer than the longest a request may send."""
    limit = options.max_signal_length
    if limit is not None and card.min_length > limit:
        raise CardError(
            f"{model_dir / CARD_FILE}: min_length {card.min_length} is above "
            f"SHAPE_DETECTOR_MAX_SIGNAL_LENGTH ({limit}): every request would be refused, too short "
            "for the model or too long for the service; lower the card's min_length or raise "
            "SHAPE_DETECTOR_MAX_SIGNAL_LENGTH (and SHAPE_DETECTOR_MAX_SAMPLES with it)"
        )


# Scores of a signal in windows against whole, at warm-up (``check_windows``): 0 on the CPUs
# measured, up to 0.2 with a card that understates the model's receptive field.
WINDOW_TOLERANCE = 1e-4
ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16"}


def check_tensors(card: Card, session: ort.InferenceSession, model_dir: Path) -> None:
    """Raises ``CardError`` unless the model file takes the card's inputs and gives its outputs
    (among others, maybe), each of the card's dtype and shape: a size where the card gives a
    number, a variable one where it gives a name."""

    def spec(name: str, dtype: str, shape: Sequence[object]) -> str:
        dims = ", ".join(str(d) if isinstance(d, int) else "variable" for d in shape)
        return f"{name} {ORT_DTYPES.get(dtype, dtype)} [{dims}]"

    def listed(specs: list[str]) -> str:
        return ", ".join(specs) or "none"

    takes = sorted(spec(a.name, a.type, a.shape) for a in session.get_inputs())
    gives = {a.name: spec(a.name, a.type, a.shape) for a in session.get_outputs()}
    inputs = sorted(spec(t.name, t.dtype, t.shape) for t in card.inputs)
    outputs = [spec(t.name, t.dtype, t.shape) for t in card.outputs]
    if takes != inputs or any(gives.get(t.name) != s for t, s in zip(card.outputs, outputs, strict=True)):
        raise CardError(
            f"{model_dir / MODEL_FILE} takes {listed(takes)} and gives {listed(list(gives.values()))}; "
            f"its {CARD_FILE} says it takes {listed(inputs)} and gives {listed(outputs)}: "
            "the card is not this model's, export them together"
        )


class OnnxModel:
    """A model directory (``model.onnx`` + ``card.json``) loaded into one session.

    The model file is read once: its sha256 is checked on those bytes (``verify``) and the
    session is made from them, so the model that serves is the one verified."""

    def __init__(
        self,
        model_dir: Path,
        options: InferenceOptions | None = None,
        *,
        verify: bool = True,
    ) -> None:
        self.options = options or InferenceOptions()
        self.card: Card = load_card(model_dir, verify=False)
        model_bytes = read_model(model_dir, self.card, verify=verify)
        check_servable(self.card, model_dir, self.options)
        so = session_options(self.options)
        # A model that keeps tensors in other files (ONNX external data) finds them beside it,
        # as when made from its path (made from bytes, onnxruntime would look in the working
        # directory). The card's sha256 covers model.onnx alone.
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(model_dir))
        self.session = ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])
        check_tensors(self.card, self.session, model_dir)
        self.plan = WindowPlan.for_model(self.options.window, self.card.receptive_radius, self.card.alignment)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    def run(self, batch: Float32Array) -> Float32Array:
        """Raw per-sample scores for a float32 batch (n, L) of equal-length signals."""
        (scores,) = self.session.run(["scores"], {"signal": batch})
        return np.asarray(scores, dtype=np.float32)

    def warm_up(self) -> None:
        """Inference on a short input and on the largest batch the service will run.

        The largest batch makes onnxruntime allocate its working memory now, at start-up,
        not on the first long signal. No call is larger than a request's largest: at most
        ``max_batch_samples`` samples, or one window where a window is longer (a card's long
        ``min_length`` is run in windows too). Raises, saying what is wrong, if the model gives
        unusable scores: not one per sample, or not probabilities, or, in windows, not its
        scores of the whole signal (``check_windows``).
        """
        rows = max(1, self.options.max_batch_samples // self.plan.window)
        short = min(max(self.card.min_length, 256), self.plan.window)
        for shape in ((1, short), (rows, self.plan.window)):
            scores = self.run(np.zeros(shape, dtype=np.float32))
            if scores.shape != shape:
                problem = f"scores of shape {list(scores.shape)}, not one per sample"
            elif not np.all(np.isfinite(scores)):
                problem = "scores that are not finite"
            elif not np.all((scores >= 0) & (scores <= 1)):
                problem = (
                    f"scores from {scores.min():g} to {scores.max():g}, not probabilities in [0, 1] "
                    "(exported without its final sigmoid?)"
                )
            else:
                continue
            raise RuntimeError(
                f"model {self.name}: warm-up on zeros of shape {list(shape)} gave {problem}; "
                f"'scores' must be a probability per input sample: re-export {MODEL_FILE}"
            )
        self.check_windows()

    def check_windows(self) -> None:
        """Raises unless the card's receptive field and alignment are the model's: a random
        signal scored in the shortest windows they allow must get its scores of the whole
        signal, and so in windows one alignment longer (their seams fall elsewhere). With a
        card that understates them, every signal longer than a window got wrong scores near
        the seams of its windows (by up to 0.2), silently. They must agree within
        ``WINDOW_TOLERANCE``: exactly on the CPUs measured, but a CPU's kernels may round a
        window's edges otherwise, and a model must not be refused for that. No call is longer
        than one window of the service's."""
        radius, alignment = self.card.receptive_radius, self.card.alignment
        least = least_window(radius, alignment)
        length = min(3 * (least + alignment), self.plan.window)
        signal = np.random.default_rng(0).standard_normal(length).astype(np.float32)
        whole = self.run(signal[None])[0]
        for window in (least, least + alignment):
            plan = WindowPlan.for_model(window, radius, alignment)
            if length <= plan.window:  # not cut: the service's windows are no longer
                continue
            (windowed,) = score_pieces([signal], plan, self.run, self.options.max_batch_samples)
            error = float(np.max(np.abs(windowed - whole)))
            if error > WINDOW_TOLERANCE:
                raise RuntimeError(
                    f"model {self.name}: its card's receptive_field {self.card.receptive_field} and "
                    f"alignment {alignment} are not the model's: scored in windows they allow, a "
                    f"signal gets scores up to {error:.2g} away from its scores whole; re-export the "
                    "card with the model (training measures both)"
                )

    def scores(
        self, signals: Sequence[npt.NDArray[np.floating]], map_batches: Map | None = None
    ) -> list[Float32Array]:
        """Per-sample probability curves; each equals the whole-signal result.

        ``map_batches`` runs the onnxruntime calls (for example on several workers at once).
        """
        # No float32 copy of whole signals: each window is cast as it is copied into a batch.
        arrays = [np.asarray(s) for s in signals]
        return score_pieces(arrays, self.plan, self.run, self.options.max_batch_samples, map_batches)

    def detect(
        self,
        signals: Sequence[npt.NDArray[np.floating]],
        threshold: float | None = None,
        min_distance: int | None = None,
        *,
        return_scores: bool = False,
    ) -> list[Detection]:
        """Probability, decision and peaks of each signal (the card gives the defaults)."""
        thr = self.card.threshold if threshold is None else threshold
        dist = self.card.min_distance if min_distance is None else min_distance
        return detections(
            self.scores(signals), thr, dist, calibrator=self.card.calibrator, return_scores=return_scores
        )


def detections(
    curves: Sequence[Float32Array],
    threshold: float,
    min_distance: int,
    *,
    calibrator: Calibrator = IDENTITY,
    return_scores: bool = False,
) -> list[Detection]:
    """Raw per-sample score curves -> probability, decision and peaks of each signal.

    ``threshold`` is on the calibrated peak scale. Peaks are found on the raw curve with the
    threshold mapped back (the map is strictly increasing, so the peaks are the same; a raw
    score reaches ``raw_threshold`` exactly when its reported probability reaches ``threshold``,
    that probability's own value included); the
    signal's probability, the peaks' probabilities and the returned curve are mapped. The maps
    are applied once to all the values (one pass over both, not one per signal).
    """
    if not curves:
        return []
    raw_threshold = calibrator.peak.raw_threshold(threshold)
    found = find_peaks_flat(curves, raw_threshold, min_distance, maxima=True)
    raw_max = np.asarray(found.maxima, dtype=np.float64)  # asked for: never None
    if calibrator.peak.identity:
        probability = calibrator.signal(raw_max).tolist()
        peaks = found.split()
    else:
        signal_p, peak_p = calibrator.both(raw_max, found.values)
        probability = signal_p.tolist()
        peaks = found.split(peak_p.astype(np.float32))
    # Compared in float64, as the threshold was mapped back (not rounded to the curves' float32).
    detected = (raw_max >= raw_threshold).tolist()
    results = []
    for curve, found_peaks, hit, p in zip(curves, peaks, detected, probability, strict=True):
        scores = None
        if return_scores:
            scores = curve if calibrator.peak.identity else calibrator.peak(curve).astype(np.float32)
        results.append(Detection(probability=p, detected=hit, peaks=found_peaks, scores=scores))
    return results


@dataclass(frozen=True, slots=True)
class Options:
    """One request's detection options (``threshold`` on the calibrated peak scale)."""

    threshold: float
    min_distance: int
    return_scores: bool = False


def detections_per_request(
    requests: Sequence[tuple[Options, Sequence[Float32Array]]], *, calibrator: Calibrator = IDENTITY
) -> list[list[Detection]]:
    """``detections`` of several requests' curves, each request with its own options.

    Requests with the same options (usually all: the card's defaults) share one ``detections``
    call over all their curves, so its fixed cost is paid once per batch, not per request.
    """
    answers: list[list[Detection]] = [[] for _ in requests]
    by_options: dict[Options, list[int]] = {}
    for i, (options, _) in enumerate(requests):
        by_options.setdefault(options, []).append(i)
    for options, members in by_options.items():
        curves = [curve for i in members for curve in requests[i][1]]
        results = detections(
            curves,
            options.threshold,
            options.min_distance,
            calibrator=calibrator,
            return_scores=options.return_scores,
        )
        start = 0
        for i in members:
            count = len(requests[i][1])
            answers[i] = results[start : start + count]
            start += count
    return answers
