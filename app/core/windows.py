"""Long signals in overlapping windows, stitched exactly.

The model has a finite receptive field and down-samples by ``alignment``. An output sample
therefore depends only on the inputs within ``radius`` of it, on where it sits modulo
``alignment`` and on signal edges within ``radius``. Windows that start at multiples of
``alignment`` and overlap by ``margin >= radius`` on each side reproduce the whole-signal
output exactly in their kept middle part. Every window but a signal's last has the same
length, so windows from different signals batch together.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Piece:
    """One window of one signal: run ``[start, stop)``, keep ``[keep_start, keep_stop)``."""

    signal: int
    start: int
    stop: int
    keep_start: int
    keep_stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def least_window(radius: int, alignment: int) -> int:
    """The shortest window length a model with this receptive radius and alignment can run
    in: rounded up to the alignment, it must hold four margins (a margin is the radius rounded
    up to the alignment), so that what a window keeps, its length less a margin on each side,
    is at least two margins long."""
    margin = round_up(max(radius, 1), alignment)
    return 4 * margin - alignment + 1


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """Window length and overlap for a model with the given radius and alignment."""

    window: int
    margin: int
    alignment: int

    @classmethod
    def for_model(cls, window: int, radius: int, alignment: int) -> WindowPlan:
        margin = round_up(max(radius, 1), alignment)
        if window < least_window(radius, alignment):
            raise ValueError(
                f"window length {window} (SHAPE_DETECTOR_WINDOW) is too short for a model whose "
                f"receptive radius is {radius} samples: use at least {least_window(radius, alignment)}"
            )
        return cls(window=round_up(window, alignment), margin=margin, alignment=alignment)

    def split(self, signal: int, length: int) -> list[Piece]:
        """Pieces covering ``[0, length)``; their kept parts tile the signal exactly once."""
        if length <= self.window:
            return [Piece(signal, 0, length, 0, length)]
        step = self.window - 2 * self.margin
        pieces: list[Piece] = []
        start = 0
        while start + self.window < length:
            keep_start = 0 if start == 0 else start + self.margin
            pieces.append(
                Piece(signal, start, start + self.window, keep_start, start + self.window - self.margin)
            )
            start += step
        # The last window runs to the signal's end; it is longer than 2 * margin.
        pieces.append(Piece(signal, start, length, start + self.margin, length))
        return pieces


Map = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


def score_pieces(
    signals: Sequence[npt.NDArray[np.floating]],
    plan: WindowPlan,
    run: Callable[[Float32Array], Float32Array],
    max_batch_samples: int,
    map_batches: Map | None = None,
) -> list[Float32Array]:
    """Per-sample scores of every signal, running ``run`` on batches of equal-length windows.

    Signals may be any real dtype: each window is cast to float32 as it is copied into its
    batch. ``run`` maps a float32 array (n, L) to scores (n, L). A batch holds at most
    ``max_batch_samples`` samples (at least one window), which bounds memory. Batches are
    independent (each writes its own windows' kept parts): ``map_batches`` (for example
    ``Batcher.map``) may run them at once; by default they run one after the other.
    """
    # A signal no longer than a window runs whole: its batch row is the signal and its curve a
    # row of the batch's scores (a view, no copy); it is listed by its index, not as a Piece.
    out: list[Float32Array | None] = [None] * len(signals)
    groups: dict[int, list[int | Piece]] = defaultdict(list)
    for i, s in enumerate(signals):
        if len(s) <= plan.window:
            groups[len(s)].append(i)
            continue
        out[i] = np.empty(len(s), dtype=np.float32)
        for piece in plan.split(i, len(s)):
            groups[piece.length].append(piece)
    chunks: list[tuple[int, list[int | Piece]]] = []
    for length, items in groups.items():
        per_batch = max(1, max_batch_samples // length)
        chunks.extend((length, items[b : b + per_batch]) for b in range(0, len(items), per_batch))

    def score_batch(chunk: tuple[int, list[int | Piece]]) -> None:
        length, items = chunk
        batch = np.empty((len(items), length), dtype=np.float32)
        for row, item in enumerate(items):
            batch[row] = (
                signals[item] if isinstance(item, int) else signals[item.signal][item.start : item.stop]
            )
        scores = run(batch)
        if scores.shape != batch.shape:
            raise RuntimeError(f"model returned scores of shape {scores.shape} for a batch of {batch.shape}")
        # Curves are float32 and contiguous, the rows given as they are (no copy when they are).
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        for row, item in enumerate(items):
            if isinstance(item, int):
                out[item] = scores[row]
            else:
                curve = cast(Float32Array, out[item.signal])
                curve[item.keep_start : item.keep_stop] = scores[
                    row, item.keep_start - item.start : item.keep_stop - item.start
                ]

    if map_batches is None or len(chunks) < 2:
        for chunk in chunks:
            score_batch(chunk)
    else:
        map_batches(score_batch, chunks)
    return cast(list[Float32Array], out)
