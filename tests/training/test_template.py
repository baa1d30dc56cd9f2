"""A user's template from CSV or .npy: good files, and clear errors for bad ones."""

import re
from pathlib import Path

import numpy as np
import pytest

from training.template import MAX_TEMPLATE, MIN_TEMPLATE, TemplateError, load_template

SHAPE = [0.0, 0.5, -2.0, 1.0, 0.25, 0.0]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text",
    [
        "\n".join(map(str, SHAPE)) + "\n",  # one value per line
        ",".join(map(str, SHAPE)),  # one row
        "value\n" + "\n".join(map(str, SHAPE)),  # a header line
        "# my shape\n\n" + " ; ".join(map(str, SHAPE)) + "\n\n",  # comment, blank lines, semicolons
        "0.0 0.5\n-2.0\t1.0\n0.25, 0.0",  # any mix
    ],
)
def test_csv_forms(tmp_path: Path, text: str) -> None:
    tpl = load_template(write(tmp_path, "k.csv", text))
    assert tpl.values.tolist() == SHAPE
    assert tpl.center == 2  # the largest absolute value, here negative


def test_npy_forms_and_named_centre(tmp_path: Path) -> None:
    for i, arr in enumerate([np.array(SHAPE), np.array([SHAPE], dtype=np.float32), np.array(SHAPE)[:, None]]):
        np.save(tmp_path / f"k{i}.npy", arr)
        tpl = load_template(tmp_path / f"k{i}.npy")
        assert tpl.values.tolist() == pytest.approx(SHAPE) and tpl.center == 2
    assert load_template(tmp_path / "k0.npy", center=4).center == 4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "empty"),
        ([1.0, float("nan"), 2.0, 3.0, 4.0], "non-finite"),
        ([1.0, float("inf"), 2.0, 3.0, 4.0], "finite numbers"),
        ([3.0] * 10, "constant"),
        ([1.0, 2.0, 3.0, 2.0], f"at least {MIN_TEMPLATE}"),
        (list(np.sin(np.arange(MAX_TEMPLATE + 1))), f"more than {MAX_TEMPLATE}"),
    ],
)
def test_bad_values(tmp_path: Path, values: list[float], message: str) -> None:
    csv = write(tmp_path, "k.csv", "\n".join(map(str, values)))
    np.save(tmp_path / "k.npy", np.array(values, dtype=np.float64))
    for path in (csv, tmp_path / "k.npy"):
        with pytest.raises(TemplateError, match=message):
            load_template(path)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="line 3: 'abc' is not a number"):
        load_template(write(tmp_path, "a.csv", "1\n2\nabc\n4\n5\n"))
    with pytest.raises(TemplateError, match="no such file"):
        load_template(tmp_path / "missing.csv")
    np.save(tmp_path / "two_d.npy", np.ones((3, 4)))
    with pytest.raises(TemplateError, match=r"1-D \(n,\), got shape \(3, 4\)"):
        load_template(tmp_path / "two_d.npy")
    np.save(tmp_path / "obj.npy", np.array([1, "a", None], dtype=object), allow_pickle=True)
    with pytest.raises(TemplateError, match=r"not a plain numeric \.npy"):
        load_template(tmp_path / "obj.npy")
    np.save(tmp_path / "c.npy", np.ones(6, dtype=np.complex64))
    with pytest.raises(TemplateError, match="real numbers"):
        load_template(tmp_path / "c.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(TemplateError, match=r"cannot read it as \.npy|not a plain numeric"):
        load_template(tmp_path / "junk.npy")
    with pytest.raises(TemplateError, match=r"centre 6 is outside the template \(0..5\)"):
        load_template(write(tmp_path, "k.csv", ",".join(map(str, SHAPE))), center=6)


def test_shipped_example_templates() -> None:
    root = Path(__file__).resolve().parents[2] / "training" / "templates"
    arrival = load_template(root / "arrival.csv")
    assert arrival.values.size == 89 and arrival.center == 12
    assert np.all(arrival.values[:8] == 0)  # quiet before the onset
    chirp = load_template(root / "chirp.npy")
    assert chirp.values.size == 201 and chirp.center == 102


def test_files_that_are_not_templates(tmp_path: Path) -> None:
    """A binary file or UTF-16 text named .csv, an .npz named .npy: one line saying what to do."""
    np.save(tmp_path / "k.npy", np.array(SHAPE))
    (tmp_path / "binary.csv").write_bytes((tmp_path / "k.npy").read_bytes())
    (tmp_path / "utf16.csv").write_text("\n".join(map(str, SHAPE)), encoding="utf-16")
    for name in ("binary.csv", "utf16.csv"):
        with pytest.raises(TemplateError, match=r"not UTF-8 text.*save it as a UTF-8 CSV"):
            load_template(tmp_path / name)
    np.savez(tmp_path / "k.npz", k=np.array(SHAPE))
    (tmp_path / "archive.npy").write_bytes((tmp_path / "k.npz").read_bytes())
    with pytest.raises(TemplateError, match=r"an \.npz archive.*np\.save"):
        load_template(tmp_path / "archive.npy")


def test_a_directory_is_not_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "shape.npy").mkdir()
    for path in (tmp_path, tmp_path / "shape.npy"):
        with pytest.raises(
            TemplateError, match=r"a directory, not a file; give the template's \.csv or \.npy"
        ):
            load_template(path)


def test_a_table_with_named_columns_is_refused(tmp_path: Path) -> None:
    """A time column beside the values was read interleaved with them, as one shape."""
    table = "time,value\n" + "\n".join(f"{i},{v}" for i, v in enumerate(SHAPE))
    with pytest.raises(TemplateError, match=r"a table of 2 columns \(time, value\).*keep its one column"):
        load_template(write(tmp_path, "k.csv", table))
    # a header over one row of values is still one row
    assert (
        load_template(write(tmp_path, "r.csv", "a,b,c,d,e,f\n" + ",".join(map(str, SHAPE)))).values.tolist()
        == SHAPE
    )


@pytest.mark.parametrize(
    ("text", "line", "number"),
    [
        ("0\n0,5\n-2\n1\n0,25\n0\n", 2, "0,5"),  # one value per line, a European locale's export
        ("value\n0\n0,5\n-2\n1\n0,25\n0\n", 3, "0,5"),  # with a header
        ("0;0,5;-2;1;0,25;0\n", 1, "0,5"),  # one row, semicolons between values
        ("t;value\n0;0\n1;0,5\n2;-2\n", 3, "0,5"),  # a table of semicolon-separated columns
        ("0\n-1,5e-3\n2\n3\n4\n", 2, "-1,5e-3"),
    ],
)
def test_a_decimal_comma_is_refused(tmp_path: Path, text: str, line: int, number: str) -> None:
    """``0,5`` (one half, in a European locale's CSV) was read as the two values 0 and 5."""
    fixed = number.replace(",", ".")
    with pytest.raises(
        TemplateError,
        match=rf"line {line}: '{re.escape(number)}' reads as two values: .*decimal point \({re.escape(fixed)}\)",
    ):
        load_template(write(tmp_path, "k.csv", text))


@pytest.mark.parametrize(
    "text",
    [
        "0,1,3,1,0,-1",  # one row of integers
        "0, 1\n3, 1\n0, -1\n",  # two integers a line, separated by a comma and a space
        "0.0,0.5\n-2.0,1.0\n0.25,0.0\n",  # decimal points, two a line
        "0;1;3\n1;0;-1\n",  # integers between semicolons
    ],
)
def test_commas_between_values_still_separate_them(tmp_path: Path, text: str) -> None:
    values = [float(v) for v in re.split(r"[,;\s]+", text.strip())]
    assert load_template(write(tmp_path, "k.csv", text)).values.tolist() == values


@pytest.mark.parametrize(
    ("text", "line", "field", "hint"),
    [
        ("0,0.5,x,1,0.25,0\n", 1, "x", ")"),  # a typo in a one-row template
        ("0 0.5 \u22122 1 0.25 0\n", 1, "\u22122", ")"),  # a Unicode minus, pasted from a document
        ('"0","0.5","-2","1","0.25","0"\n', 1, '"0"', ", without quotes)"),  # every value quoted
        ('"0"\n"0.5"\n"-2"\n"1"\n"0.25"\n"0"\n', 1, '"0"', ", without quotes)"),  # one quoted column
    ],
)
def test_a_row_of_numbers_with_one_that_is_not_is_not_a_header(
    tmp_path: Path, text: str, line: int, field: str, hint: str
) -> None:
    """A line that did not read as numbers before any that did was skipped as a header: with no
    other line, the file was called empty ('the template is empty; give 5 to 1025 values')."""
    with pytest.raises(TemplateError) as exc:
        load_template(write(tmp_path, "k.csv", text))
    assert str(exc.value).startswith(f"{tmp_path / 'k.csv'}, line {line}: {field!r} is not a number")
    assert str(exc.value).endswith(hint)


def test_a_header_alone_is_still_an_empty_template(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="the template is empty"):
        load_template(write(tmp_path, "k.csv", "time,value\n"))
