"""The model card: the contract between training and serving.

The service reads a model's name, lengths, threshold, alignment and labels from here, never
from constants. Training writes it; ``load_card`` validates it on the way in.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import stat
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.core.calibration import Calibrator, MonotoneMap
from app.core.names import meant

CARD_FILE = "card.json"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # a model's name: also its directory and URL segment
VERSION_PATTERN = r"^[^/\s]+$"  # a version: named in answers and in /v2 paths (no slash, no white space)
MODEL_FILE = "model.onnx"
MAX_CARD_BYTES = 16 * 1024 * 1024  # the shipped cards: about 40 KiB
# Answers echo min_distance as a 64-bit integer; any distance past a signal's length acts alike.
MAX_MIN_DISTANCE = 2**63 - 1


class CardError(ValueError):
    """A model card is missing, malformed, or disagrees with its model file or the service's settings."""


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: str = Field(examples=["float32"])
    shape: list[str | int] = Field(description="Dimension sizes; names mark dynamic axes.")


class SuiteMetrics(BaseModel):
    """Metrics of one detector on one held-out suite."""

    model_config = ConfigDict(extra="allow")

    signals: int
    events: int
    auc: float | None = Field(
        description="Signal-level ROC AUC; null when the suite lacks signals with events, or without."
    )
    threshold: float
    precision: float
    recall: float
    f1: float
    loc_error_median: float | None = Field(description="Median |peak - centre|, samples.")
    loc_error_p95: float | None = Field(description="95th percentile |peak - centre|, samples.")
    false_alarm_rate: float = Field(description="Share of event-free signals detected.")


class CalibrationKnots(BaseModel):
    """A monotone map, piecewise linear in logit space (see ``app.core.calibration``)."""

    model_config = ConfigDict(extra="forbid")

    x: list[float] = Field(description="Logits of raw scores at the knots, strictly increasing.")
    y: list[float] = Field(description="Calibrated logits at the knots, strictly increasing.")

    @model_validator(mode="after")
    def _check(self) -> CalibrationKnots:
        MonotoneMap.from_dict(self.model_dump())  # raises ValueError with what is wrong
        return self


class Calibration(BaseModel):
    """How raw scores become reported probabilities, and how well they are calibrated."""

    model_config = ConfigDict(extra="allow")

    signal: CalibrationKnots = Field(description="Curve maximum -> P(the signal holds an event).")
    peak: CalibrationKnots = Field(description="Peak score -> P(the peak is a true event).")
    method: str = ""


class Card(BaseModel):
    """Everything the service needs to know about a model, and how it was made."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN, description="Named in answers and in /v2 paths.")
    created: str
    description: str
    labels: list[str]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    min_length: int = Field(ge=1, description="Shortest signal the model accepts.")
    receptive_field: int = Field(
        ge=1, description="Samples that influence one output sample (normalisation included)."
    )
    alignment: int = Field(
        ge=1, description="Total down-sampling factor; window starts must be multiples of it."
    )
    threshold: float = Field(gt=0, lt=1)
    threshold_selection: str
    min_distance: int = Field(ge=1, le=MAX_MIN_DISTANCE)
    min_distance_selection: str
    template: list[float] | None = None
    template_center: int | None = None
    macs_per_sample: float | None = None
    parity_max_abs_error: float | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, dict[str, SuiteMetrics]] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    polarity: bool = Field(False, description="True: an inverted copy of the shape counts as an event.")
    calibration: Calibration | None = Field(
        None, description="Maps applied to reported probabilities; none: raw scores are reported."
    )

    @cached_property
    def calibrator(self) -> Calibrator:
        """The card's calibration maps, ready to apply (built on first use, then a plain
        attribute: read on every request)."""
        c = self.calibration
        if c is None:
            return Calibrator()
        return Calibrator(
            signal=MonotoneMap.from_dict(c.signal.model_dump()),
            peak=MonotoneMap.from_dict(c.peak.model_dump()),
        )

    @model_validator(mode="after")
    def _check_fields(self) -> Card:
        """Unknown fields are kept (a newer training package may write more), but not one that
        looks like a misspelt field the card lacks (``calibraton``): that field, ignored, would
        change what the model answers (without ``calibration`` its scores are reported raw)."""
        for key in self.model_extra or {}:
            if near := meant(key.lower(), type(self).model_fields, self.model_fields_set):
                raise ValueError(f"field {key!r} is not a card field; name it {near!r}")
        return self

    @model_validator(mode="after")
    def _check_io(self) -> Card:
        names_in = [t.name for t in self.inputs]
        names_out = {t.name for t in self.outputs}
        if names_in != ["signal"] or not {"probability", "scores"} <= names_out:
            raise ValueError(
                "the model must take one input 'signal' and give outputs 'probability' and "
                f"'scores'; the card lists inputs {names_in} and outputs {sorted(names_out)}"
            )
        if (
            self.template is not None
            and self.template_center is not None
            and not (0 <= self.template_center < len(self.template))
        ):
            raise ValueError("template_center must index into template")
        return self

    @property
    def receptive_radius(self) -> int:
        """Samples on each side of an output sample that can change it."""
        return self.receptive_field // 2


def model_names(model_dir: Path) -> list[str]:
    """The models under ``model_dir``, by name: its sub-directories that hold ``card.json`` or
    ``model.onnx`` (one of them missing, the model's load says so). A sub-directory that cannot
    be looked into (permission denied) is one if its name could be a model's, so that its load
    names the fault; any other (``lost+found`` on a mounted volume) is passed over. Raises
    ``OSError`` if ``model_dir`` itself cannot be read."""
    names = []
    for path in sorted(model_dir.iterdir()):
        try:
            found = path.is_dir() and ((path / CARD_FILE).exists() or (path / MODEL_FILE).exists())
        except OSError:
            found = re.fullmatch(NAME_PATTERN, path.name) is not None
        if found:
            names.append(path.name)
    return names


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_card(model_dir: Path, *, verify: bool = True) -> Card:
    """Read and validate ``<model_dir>/card.json``; with ``verify``, check the model file's
    sha256 against it (``read_model``, its bytes then dropped: a caller that loads the model
    makes it from ``read_model``'s bytes instead)."""
    card_path = model_dir / CARD_FILE
    try:
        text = read_regular(card_path, MAX_CARD_BYTES).decode("utf-8")
        raw = json.loads(text, object_pairs_hook=_no_repeats)
    except CardError:
        raise
    except FileNotFoundError as exc:
        raise CardError(f"{card_path}: no model card (expected {CARD_FILE} beside the model)") from exc
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8, a number too long
        raise CardError(f"{card_path}: cannot read the model card: {exc}") from exc
    try:
        card = Card.model_validate(raw)
    except ValidationError as exc:
        raise CardError(f"{card_path}: invalid model card: {exc}") from exc
    if card.name != model_dir.name:
        # A copied or renamed model directory: the service serves a model by its directory's name.
        rule = "a model's name is 1-64 lower-case letters, digits, '-' or '_'"
        set_name = f'set "name" in {CARD_FILE} to {model_dir.name!r}'
        # A copy beside the model it was copied from: that directory's name is taken.
        taken = (model_dir.parent / card.name).exists()
        if re.fullmatch(NAME_PATTERN, model_dir.name):
            fix = set_name if taken else f"{set_name}, or rename the directory to {card.name!r}"
        elif taken:
            fix = f'rename the directory to a model\'s name and set "name" in {CARD_FILE} to it ({rule})'
        else:
            fix = f"rename the directory to {card.name!r} ({rule})"
        raise CardError(
            f"{card_path}: card name {card.name!r} differs from its directory {model_dir.name!r}, "
            f"the name the model is served under: {fix}"
        )
    if verify:
        read_model(model_dir, card)
    return card


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object of the card, refused if it names a field twice: the last one would win
    unseen (an edited card's added ``threshold`` above the one already there, say)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the field {key!r} is given twice in one object: keep one")
        found[key] = value
    return found


def read_model(model_dir: Path, card: Card, *, verify: bool = True) -> bytes:
    """The bytes of ``<model_dir>/model.onnx``, read once; with ``verify``, their sha256 checked
    against the card's. The session is made from these bytes, not from the path: a file
    replaced on disk after this read is not what serves."""
    onnx_path = model_dir / MODEL_FILE
    try:
        data = read_regular(onnx_path)
    except FileNotFoundError:
        raise CardError(f"{onnx_path}: model file missing") from None
    if verify:
        actual = sha256_bytes(data)
        if actual != card.sha256:
            raise CardError(
                f"{onnx_path}: sha256 {actual} does not match the card's {card.sha256}; "
                "the model file was changed or corrupted, re-export it with its card"
            )
    return data


def read_regular(path: Path, most: int | None = None) -> bytes:
    """The bytes of ``path``, a regular file (or a symbolic link to one). Anything else is
    refused with ``CardError`` before it is opened: a directory, a FIFO (reading one waits for a
    writer: the loading of every model waited with it), a device (``/dev/zero`` never ends); so
    is a file of more than ``most`` bytes."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise CardError(f"{path}: not a regular file; {path.name} must be one")
    if most is not None and info.st_size > most:
        raise CardError(f"{path}: {info.st_size} bytes, more than {most}: is it the right file?")
    return path.read_bytes()


def write_card(model_dir: Path, card: Card) -> Path:
    """``card.json``, strict JSON: a value that is not a finite number (an undefined metric in
    the training record, say) is written as null, never as ``NaN``, which JSON does not have."""
    path = model_dir / CARD_FILE
    text = json.dumps(_finite_or_null(card.model_dump(mode="json")), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value
