"""The one rule for a name that looks like a misspelling of a known one: a card's field, a
data file's key, a setting. Such a name, ignored, would leave what it meant at its default."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable

CLOSE = 0.8  # difflib's ratio: calibraton / calibration, API_KEY / API_KEYS, group / groups


def meant(name: str, known: Iterable[str], given: Collection[str]) -> str | None:
    """The known name ``name`` looks like a misspelling of, when that one is not ``given`` too
    (given both, ``name`` is something else); else None."""
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=CLOSE)
    return near[0] if near and near[0] not in given else None
