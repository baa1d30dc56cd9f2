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
from typing import Any

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
    out = [np.empty(len(s), dtype=np.float32) for s in signals]
    groups: dict[int, list[Piece]] = defaultdict(list)
    for i, s in enumerate(signals):
        for piece in plan.split(i, len(s)):
            groups[piece.length].append(piece)
    chunks: list[list[Piece]] = []
    for length, pieces in groups.items():
        per_batch = max(1, max_batch_samples // length)
        chunks.extend(pieces[b : b + per_batch] for b in range(0, len(pieces), per_batch))

    def score_batch(chunk: list[Piece]) -> None:
        batch = np.empty((len(chunk), chunk[0].length), dtype=np.float32)
        for row, p in enumerate(chunk):
            batch[row] = signals[p.signal][p.start : p.stop]
        scores = run(batch)
        if scores.shape != batch.shape:
            raise RuntimeError(f"model returned scores of shape {scores.shape} for a batch of {batch.shape}")
        for row, p in enumerate(chunk):
            kept = scores[row, p.keep_start - p.start : p.keep_stop - p.start]
            out[p.signal][p.keep_start : p.keep_stop] = kept

    if map_batches is None or len(chunks) < 2:
        for chunk in chunks:
            score_batch(chunk)
    else:
        map_batches(score_batch, chunks)
    return out
