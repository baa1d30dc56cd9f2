"""A user's template: the one clean example of the shape to detect, from CSV or ``.npy``.

CSV: numbers separated by commas, semicolons or whitespace, one value per line or all on one
row (or any mix); blank lines and lines starting with ``#`` are ignored; a first line that is
not numeric (a header) is skipped, unless it names the columns of a table (refused). Numbers
take a decimal point: a decimal comma (``0,5``) is refused, as it would read as two values.
``.npy``: a 1-D array of real numbers (or shape (1, n) / (n, 1)), read without pickle.

The event's location is the template's largest absolute value unless the caller names
another sample (``center``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from training.scenario import Template

MIN_TEMPLATE = 5
MAX_TEMPLATE = 1025

_SEPARATORS = re.compile(r"[,;\s]+")
# A number written with a decimal comma (``0,5``, ``-1,25e-3``), as a European locale exports it.
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+(?:[eE][+-]?\d+)?")


class TemplateError(ValueError):
    """The template file is unusable; the message says what and how to fix it."""


def _read_csv(path: Path) -> np.ndarray:
    values: list[float] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise TemplateError(
            f"{path}: not UTF-8 text (a binary file, or text in another encoding); save it as a "
            "UTF-8 CSV, or give a .npy file (np.save)"
        ) from None
    seen_numbers = False
    header: list[str] = []
    row_like: tuple[int, str] | None = None  # the first skipped line holding a number, its non-number
    widths: set[int] = set()  # values per numeric line
    numeric: list[tuple[int, str]] = []  # (line number, line) of each numeric line
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f for f in _SEPARATORS.split(line) if f]
        try:
            row = [float(f) for f in fields]
        except ValueError:
            if not seen_numbers and not values:
                header = fields
                if not row_like and any(_is_float(f.strip("\"'")) for f in fields):
                    row_like = (lineno, next(f for f in fields if not _is_float(f)))
                continue  # a header line
            bad = next(f for f in fields if not _is_float(f))
            raise _not_a_number(path, lineno, bad) from None
        seen_numbers = True
        widths.add(len(row))
        values.extend(row)
        numeric.append((lineno, line))
    if not numeric and row_like:
        # No line of numbers, but lines of numbers with one that is not (a typo, quotes, a
        # Unicode minus): the shape, not a header.
        raise _not_a_number(path, *row_like)
    if len(header) > 1 and widths == {len(header)} and len(values) > len(header):
        # A header naming columns over rows of as many values: a table (time, value), whose
        # columns would be read interleaved as one shape.
        raise TemplateError(
            f"{path}: a table of {len(header)} columns ({', '.join(header)}); the template is the "
            "shape's values alone: keep its one column (or give them all on one row)"
        )
    comma = _decimal_comma(numeric)
    if comma is not None:
        lineno, number = comma
        raise TemplateError(
            f"{path}, line {lineno}: {number!r} reads as two values: write numbers with a decimal "
            f"point ({number.replace(',', '.')}), not a decimal comma (a table: keep the shape's column)"
        )
    return np.asarray(values, dtype=np.float64)


def _not_a_number(path: Path, lineno: int, field: str) -> TemplateError:
    quoted = _is_float(field.strip("\"'"))
    return TemplateError(
        f"{path}, line {lineno}: {field!r} is not a number; the template must hold numbers "
        "only (one per line or all on one row, separated by commas or spaces"
        + (", without quotes)" if quoted else ")")
    )


def _decimal_comma(lines: list[tuple[int, str]]) -> tuple[int, str] | None:
    """The first number written with a decimal comma, and its line (None: there is none).

    A field like ``0,5`` between semicolons (a European CSV's column separator) is one; so is
    every line of a file whose lines each hold an integer or two integers joined by a comma
    (``0``, ``0,5``, ``1,25``): a decimal-comma column, or an integer table without a header,
    neither of which is one shape. Commas between values elsewhere (``0.5,1.25``, ``1, 2``, one
    row ``0,1,3,1,0``) separate values, as before.
    """
    for lineno, line in lines:
        if ";" in line:
            found = next((f for f in re.split(r"[;\s]+", line) if _DECIMAL_COMMA.fullmatch(f)), None)
            if found is not None:
                return lineno, found
    plain = [(n, line) for n, line in lines if ";" not in line]
    if plain and all(_DECIMAL_COMMA.fullmatch(line) or _INTEGER.fullmatch(line) for _, line in plain):
        return next(((n, line) for n, line in plain if "," in line), None)
    return None


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _read_npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise TemplateError(f"{path}: not a plain numeric .npy file ({exc}); save it with np.save") from None
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read it as .npy ({exc})") from None
    if isinstance(a, np.lib.npyio.NpzFile):
        a.close()
        raise TemplateError(f"{path}: an .npz archive, not one array; save the template with np.save")
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iuf":
        raise TemplateError(
            f"{path}: the template must be real numbers, got dtype {getattr(a, 'dtype', '?')}"
        )
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise TemplateError(f"{path}: the template must be 1-D (n,), got shape {a.shape}")
    return a.astype(np.float64)


def template_from_values(values: np.ndarray, center: int | None = None, source: str = "template") -> Template:
    """Check a template's values and pick its centre; raises ``TemplateError`` with the fix."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise TemplateError(f"{source}: the template is empty; give {MIN_TEMPLATE} to {MAX_TEMPLATE} values")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise TemplateError(
            f"{source}: value {bad[0]} is {v[bad[0]]}; the template must be finite numbers "
            f"({bad.size} non-finite value{'s' if bad.size > 1 else ''})"
        )
    if v.size < MIN_TEMPLATE:
        raise TemplateError(
            f"{source}: the template has {v.size} values, too short to tell the shape from noise; "
            f"give at least {MIN_TEMPLATE}"
        )
    if v.size > MAX_TEMPLATE:
        raise TemplateError(
            f"{source}: the template has {v.size} values, more than {MAX_TEMPLATE}; crop it to the "
            "event itself or down-sample the recordings"
        )
    if np.ptp(v) == 0:
        raise TemplateError(f"{source}: the template is constant ({v[0]:g}); a shape needs to vary")
    if center is None:
        center = int(np.argmax(np.abs(v)))
    elif not 0 <= center < v.size:
        raise TemplateError(
            f"{source}: centre {center} is outside the template (0..{v.size - 1}); name a sample in it"
        )
    return Template(values=v, center=int(center))


def load_template(path: Path, center: int | None = None) -> Template:
    """Read a template from ``.npy`` or CSV (any other suffix is read as CSV)."""
    path = Path(path)
    if path.is_dir():
        raise TemplateError(f"{path}: a directory, not a file; give the template's .csv or .npy file")
    if not path.is_file():
        raise TemplateError(f"{path}: no such file")
    values = _read_npy(path) if path.suffix.lower() == ".npy" else _read_csv(path)
    return template_from_values(values, center, str(path))
