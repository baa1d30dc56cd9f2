"""A user's own annotated data -> the same in-memory form as the generated data.

File format: one ``.npz`` (NumPy's ``np.savez``; read without pickle) holding

- ``signals``: float, either 2-D ``(n, T)`` (signals of one length) or 1-D, all signals
  concatenated, with ``lengths``: int ``(n,)`` giving each signal's length;
- ``events``: int ``(k, 2)``: one row ``(signal, sample)`` per event centre (``(0, 2)`` if none),
  whatever ``k``: a (2, 2) array is two rows, two events (``np.argwhere(mask)`` writes this
  layout; ``np.nonzero``'s, a row of signals over a row of samples, is its transpose);
- optional ``template``: float 1-D, the shape, for the matched-filter baseline, with optional
  ``template_center`` (int; default the largest absolute value); without it the baseline uses
  the mean of the training events' neighbourhoods (``TEMPLATE_HALF_WIDTH`` each side);
- optional ``label``: a string naming the shape (default "event");
- optional ``groups``: int ``(n,)``, the recording each signal was cut from: signals of one
  group stay on one side of the split (windows of one recording, overlapping or not, are
  near duplicates; split by signal they would land in training and test alike).

Other keys are ignored, but one close to a key above (``group``, ``template_centre``) is refused
naming the key meant. Signals (or, with ``groups``, the groups) are shuffled with the seed and
split 70 / 15 / 15 into training, validation and test. The file is identified by its absolute
path and sha256 (``UserData.describe``, the card's ``training.data``): the report re-reads and
checks it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.card import sha256_file
from app.core.names import meant
from app.core.signals import FLOAT32_MAX_TEXT, finite_in_float32
from training.evaluate import robust_normalise
from training.scenario import Dataset, Template
from training.template import TemplateError, template_from_values

MIN_SIGNALS = 10
MIN_LENGTH = 64
TEMPLATE_HALF_WIDTH = 20
KEYS = ("signals", "lengths", "events", "template", "template_center", "label", "groups")


class DataError(ValueError):
    """The user's data file is malformed, or not the one a card was trained on; the message says
    what and how to fix it."""


@dataclass
class UserData:
    train: Dataset
    val: Dataset
    test: Dataset
    template: Template
    template_source: str
    label: str
    path: Path  # the file, absolute
    sha256: str  # of the file's bytes: which data these are, wherever the file goes
    groups: dict[str, int] | None = None  # groups per split, when the file gives them

    def describe(self) -> dict[str, Any]:
        """The card's ``training.data``: the file (absolute path and sha256) and its splits."""
        parts = (("train", self.train), ("val", self.val), ("test", self.test))
        return {
            "source": str(self.path),
            "sha256": self.sha256,
            "label": self.label,
            "template": self.template_source,
            "split": {
                name: {
                    "signals": len(d),
                    "events": d.n_events,
                    **({"groups": self.groups[name]} if self.groups is not None else {}),
                }
                for name, d in parts
            },
        }


def _misspelt_keys(keys: list[str], path: Path) -> None:
    """Refuse a key that is not read but is close to one that is and is absent (``group``,
    ``template_centre``, ``Labels``): it would be ignored, and with it the recordings, the centre
    or the label it gives. Other keys (a sampling rate, say) are left alone."""
    for key in keys:
        if key not in KEYS and (near := meant(key.lower(), KEYS, keys)):
            raise DataError(
                f"{path}: key '{key}' is not read; name it '{near}' (the keys read: {', '.join(KEYS)})"
            )


def _signals(f: Any, path: Path) -> list[np.ndarray]:
    if "signals" not in f:
        raise DataError(f"{path}: no 'signals' array (keys: {sorted(f.keys())})")
    sig = f["signals"]
    if not np.issubdtype(sig.dtype, np.number) or np.issubdtype(sig.dtype, np.complexfloating):
        raise DataError(f"{path}: 'signals' must be real numbers, got dtype {sig.dtype}")
    if sig.ndim == 2:
        if "lengths" in f:
            raise DataError(f"{path}: 'lengths' goes with a 1-D concatenated 'signals', not 2-D")
        out = [row.astype(np.float64) for row in sig]
    elif sig.ndim == 1:
        if "lengths" not in f:
            raise DataError(f"{path}: a 1-D 'signals' needs 'lengths' (int, one per signal)")
        lengths = f["lengths"]
        if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer) or np.any(lengths < 1):
            raise DataError(f"{path}: 'lengths' must be a 1-D array of positive integers")
        if int(lengths.sum()) != sig.size:
            raise DataError(
                f"{path}: 'lengths' add up to {int(lengths.sum())} but 'signals' has {sig.size} samples"
            )
        out = [a.astype(np.float64) for a in np.split(sig, np.cumsum(lengths)[:-1])]
    else:
        raise DataError(f"{path}: 'signals' must be 1-D (with 'lengths') or 2-D, got shape {sig.shape}")
    if len(out) < MIN_SIGNALS:
        raise DataError(
            f"{path}: {len(out)} signal(s); need at least {MIN_SIGNALS} to split into training, validation "
            "and test: cut long recordings into windows"
        )
    for i, s in enumerate(out):
        if s.size < MIN_LENGTH:
            raise DataError(f"{path}: signal {i} has {s.size} samples; need at least {MIN_LENGTH}")
        bad = np.flatnonzero(~finite_in_float32(s))
        if bad.size and not np.isfinite(s[bad[0]]):
            padded = sig.ndim == 2 and np.isnan(s[bad[0] :]).all()  # a shorter signal, NaN-padded
            raise DataError(
                f"{path}: signal {i} has a non-finite value ({s[bad[0]]}) at sample {bad[0]}"
                + (
                    ", and only NaN after it: signals of different lengths go concatenated in a 1-D "
                    "'signals' with their 'lengths', not padded"
                    if padded
                    else ""
                )
            )
        if bad.size:  # infinite in float32, which the model computes in (the service refuses it too)
            raise DataError(
                f"{path}: signal {i} has a value ({s[bad[0]]}) at sample {bad[0]} outside the float32 "
                f"range (±{FLOAT32_MAX_TEXT}), which the model computes in: rescale the signals"
            )
    return out


def _events(f: Any, path: Path, signals: list[np.ndarray]) -> list[np.ndarray]:
    """Event centres per signal from ``events``: always one row ``(signal, sample)`` per event.

    The layout is the documented one whatever the shape, (2, 2) included: such an array is two
    events, rows ``(s0, t0)`` and ``(s1, t1)``. The transposed layout (one row of signals over
    one row of samples, as ``np.nonzero`` gives) is refused where the shape or the values show
    it, with how to write the rows.
    """
    if "events" not in f:
        raise DataError(f"{path}: no 'events' array: give (k, 2) rows of (signal, sample)")
    ev = f["events"]
    integer = np.issubdtype(ev.dtype, np.integer) or ev.size == 0
    if integer and ev.ndim == 2 and ev.shape[0] == 2 and ev.shape[1] != 2:
        raise DataError(
            f"{path}: 'events' has shape {ev.shape}, a row of signals over a row of samples "
            f"(np.nonzero's layout); give one row (signal, sample) per event, shape ({ev.shape[1]}, 2): "
            "save events.T (or np.argwhere(mask))"
        )
    if ev.ndim != 2 or ev.shape[1] != 2 or not integer:
        raise DataError(
            f"{path}: 'events' must be an integer array of shape (k, 2), one row (signal, sample) "
            f"per event, got {ev.dtype} {ev.shape}"
        )
    ev = ev.astype(np.int64)
    per, problem = _event_rows(ev, signals)
    if problem is not None:
        if ev.shape == (2, 2) and _event_rows(ev.T, signals)[1] is None:
            problem += (
                "; read as a row of signals over a row of samples it would be valid, but each row is "
                "one event (signal, sample): if you meant columns, save events.T"
            )
        raise DataError(f"{path}: {problem}")
    return per


def _event_rows(ev: np.ndarray, signals: list[np.ndarray]) -> tuple[list[np.ndarray], str | None]:
    """Event centres per signal from rows ``(signal, sample)``, or the first row's problem."""
    per: list[list[int]] = [[] for _ in signals]
    seen: dict[tuple[int, int], int] = {}  # (signal, sample) -> its row
    for row, (i, t) in enumerate(ev):
        if not 0 <= i < len(signals):
            return [], (
                f"events row {row} (signal, sample): signal {i} does not exist (0..{len(signals) - 1})"
            )
        if not 0 <= t < signals[i].size:
            return [], (
                f"events row {row} (signal, sample): sample {t} is outside signal {i} "
                f"(0..{signals[i].size - 1})"
            )
        first = seen.setdefault((int(i), int(t)), row)
        if first != row:
            return (
                [],
                f"events rows {first} and {row} both mark sample {t} of signal {i}; give each event once",
            )
        per[i].append(int(t))
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in per], None


def _groups(f: Any, path: Path, n: int) -> np.ndarray | None:
    if "groups" not in f:
        return None
    g = f["groups"]
    if g.shape != (n,) or not np.issubdtype(g.dtype, np.integer):
        raise DataError(
            f"{path}: 'groups' must be an integer array with one per signal ({n}), the recording "
            f"each signal was cut from; got {g.dtype} {g.shape}"
        )
    return np.asarray(g, dtype=np.int64)


def _split(n: int, seed: int, groups: np.ndarray | None, path: Path) -> tuple[np.ndarray, ...]:
    """Signal indices of training, validation and test: 70 / 15 / 15 of the signals, shuffled
    with ``seed``; with ``groups``, whole groups, cut where the signals reach 70 and 85 %."""
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        n_train = round(0.7 * n)
        n_val = max(1, round(0.15 * n))
        return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    ids = rng.permutation(np.unique(groups))
    if ids.size < 3:
        raise DataError(
            f"{path}: 'groups' names {ids.size} recording(s); give at least 3, one each for "
            "training, validation and test"
        )
    sizes = np.array([np.count_nonzero(groups == i) for i in ids])
    start = np.cumsum(sizes) - sizes  # signals before each group
    t = min(max(int(np.searchsorted(start, 0.7 * n)), 1), ids.size - 2)
    v = min(max(int(np.searchsorted(start, 0.85 * n)), t + 1), ids.size - 1)
    return tuple(np.flatnonzero(np.isin(groups, part)) for part in (ids[:t], ids[t:v], ids[v:]))


def _template(f: Any, path: Path, train: Dataset) -> tuple[Template, str]:
    if "template" in f:
        tpl = f["template"]
        if tpl.ndim != 1 or tpl.dtype.kind not in "iuf":
            raise DataError(
                f"{path}: 'template' must be a 1-D array of real numbers, got {tpl.dtype} {tpl.shape}"
            )
        centre = None
        if "template_center" in f:
            c = f["template_center"]
            if c.ndim != 0 or c.dtype.kind not in "iu":
                raise DataError(
                    f"{path}: 'template_center' must be one integer (the event's sample in the "
                    f"template), got {c.dtype} {c.shape}"
                )
            centre = int(c)
        try:  # the checks of --template: 5-1025 finite values, not constant, the centre inside
            return template_from_values(tpl, centre, f"{path}: 'template'"), "given in the data file"
        except TemplateError as exc:
            raise DataError(str(exc)) from None
    if "template_center" in f:
        raise DataError(f"{path}: 'template_center' goes with 'template'; add the template or drop it")
    w = TEMPLATE_HALF_WIDTH
    segments: list[np.ndarray] = []
    for x, cs in zip(train.signals, train.events, strict=True):
        inside = cs[(cs >= w) & (cs < x.size - w)]
        if inside.size:
            z = robust_normalise(x)  # once per signal: a long recording may hold thousands of events
            segments.extend(z[c - w : c + w + 1] for c in inside)
    if not segments:
        raise DataError(f"{path}: no training events to estimate a template from; add 'template'")
    mean = np.mean(segments, axis=0)
    if np.ptp(mean) == 0:
        raise DataError(
            f"{path}: the {len(segments)} training events average to a constant shape (flat signals "
            "where they are marked?); add 'template'"
        )
    return Template(mean, w), f"mean of {len(segments)} training events (±{w})"


def _label(f: Any, path: Path) -> str:
    if "label" not in f:
        return "event"
    label = f["label"]
    if label.ndim != 0 or label.dtype.kind != "U" or not str(label).strip():
        raise DataError(
            f"{path}: 'label' must be one string naming the shape, got {label.dtype} {label.shape}"
        )
    return str(label)


def _split_events(
    path: Path, splits: tuple[Dataset, Dataset, Dataset], grouped: bool, all_three: bool
) -> None:
    """Refuse a split without events: training learns from its events, validation chooses the
    threshold and fits the calibration on them, and the test split's metrics count them (with
    none, an event F1 of 1 for a model that detects nothing). ``all_three=False``: the training
    split only."""
    n = sum(len(d) for d in splits)
    if sum(d.n_events for d in splits) == 0:
        raise DataError(f"{path}: 'events' is empty; annotate the events, one row (signal, sample) each")
    uses = {
        "training": "to learn from",
        "validation": "to choose the threshold and fit the calibration on",
        "test": "to measure the model on",
    }
    for (name, use), d in zip(uses.items(), splits if all_three else splits[:1], strict=False):
        if d.n_events == 0:
            how = "by recording ('groups')" if grouped else "by signal"
            raise DataError(
                f"{path}: the {name} split ({len(d)} of the {n} signals, split 70 / 15 / 15 {how}) "
                f"has no events {use}; annotate events in more signals"
            )


def load_user_data(
    path: Path, seed: int = 0, *, check_keys: bool = True, check_splits: bool = True
) -> UserData:
    """Read, validate and split a user's ``.npz``; raises ``DataError`` saying what is wrong.

    ``check_keys=False`` lets a misspelt key pass, ignored: the report re-reads the file a card
    was trained on, perhaps before such keys were refused, and must split it as training did;
    ``check_splits=False`` lets it hold a validation or test split without events, for the same
    reason (a training split without any is always refused).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a directory, not a file; give the .npz file (np.savez) itself")
    try:
        with path.open("rb") as fh:
            magic = fh.read(6)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from exc
    if not magic:
        raise DataError(f"{path}: the file is empty; save the arrays with np.savez")
    if not magic.startswith((b"PK", b"\x93NUMPY")):  # neither a zip archive nor a .npy array
        raise DataError(
            f"{path}: not an .npz archive (np.savez); save the arrays (signals, events, ...) "
            "with np.savez, see README: 'Your own data'"
        )
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file without pickled objects ({exc})") from exc
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: expected an .npz archive (np.savez), got a single array")
    with f:
        for key in f.files:  # members are read lazily: refuse pickled objects up front
            try:
                f[key]
            except ValueError as exc:
                raise DataError(
                    f"{path}: '{key}' holds Python objects, which are not read without pickle: "
                    "save plain numeric arrays"
                ) from exc
        if check_keys:
            _misspelt_keys(f.files, path)
        signals = _signals(f, path)
        events = _events(f, path, signals)
        groups = _groups(f, path, len(signals))
        parts = _split(len(signals), seed, groups, path)
        train, val, test = (Dataset([signals[i] for i in p], [events[i] for i in p]) for p in parts)
        _split_events(path, (train, val, test), groups is not None, check_splits)
        template, source = _template(f, path, train)
        label = _label(f, path)
    per_split = None
    if groups is not None:
        per_split = {
            name: int(np.unique(groups[p]).size)
            for name, p in zip(("train", "val", "test"), parts, strict=True)
        }
    return UserData(train, val, test, template, source, label, path.resolve(), sha256_file(path), per_split)
