import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from app.core.card import MAX_CARD_BYTES, CardError, SuiteMetrics, load_card, write_card


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_valid_card_loads_and_verifies(tiny_model_dir: Path) -> None:
    card = load_card(tiny_model_dir)
    assert card.name == "tiny"
    assert [t.name for t in card.outputs] == ["probability", "scores"]
    assert card.receptive_radius == card.receptive_field // 2


def test_sha256_mismatch_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "tiny")
    with (d / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CardError, match="sha256"):
        load_card(d)
    load_card(d, verify=False)  # the card itself is still valid


def test_missing_model_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "tiny")
    (d / "model.onnx").unlink()
    with pytest.raises(CardError, match="model file missing"):
        load_card(d)


def test_missing_and_malformed_cards(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "tiny")
    (d / "card.json").write_text("{not json")
    with pytest.raises(CardError, match="cannot read"):
        load_card(d)
    (d / "card.json").write_bytes(b'{"name": "\xff"}')  # not UTF-8
    with pytest.raises(CardError, match="cannot read"):
        load_card(d)
    # A field named twice: the last one won unseen.
    card = json.loads((tiny_model_dir / "card.json").read_text())
    text = json.dumps(card)
    (d / "card.json").write_text('{"threshold": 0.01, ' + text[1:])
    with pytest.raises(CardError, match="cannot read the model card: the field 'threshold' is given twice"):
        load_card(d)
    assert '"inputs": [{"name": ' in text
    (d / "card.json").write_text(
        text.replace('"inputs": [{"name": ', '"inputs": [{"dtype": "float32", "name": ')
    )
    with pytest.raises(CardError, match="the field 'dtype' is given twice in one object: keep one"):
        load_card(d)
    (d / "card.json").unlink()
    with pytest.raises(CardError, match="no model card"):
        load_card(d)


def load_within(model_dir: Path, seconds: float = 10.0) -> BaseException | None:
    """What ``load_card`` raised, from a thread: a FIFO blocked it (and the loading of every
    model after it) forever."""
    raised: list[BaseException] = []

    def load() -> None:
        try:
            load_card(model_dir)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "load_card still reads"
    return raised[0] if raised else None


@pytest.mark.parametrize("name", ["card.json", "model.onnx"])
def test_a_file_that_is_not_a_regular_file_is_refused_at_once(
    tiny_model_dir: Path, tmp_path: Path, name: str
) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "tiny")
    (d / name).unlink()
    os.mkfifo(d / name)
    exc = load_within(d)
    assert isinstance(exc, CardError)
    assert f"{d / name}: not a regular file" in str(exc)


def test_a_huge_card_is_refused_unread(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "tiny")
    with (d / "card.json").open("r+b") as fh:
        fh.truncate(MAX_CARD_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(CardError) as err:
        load_card(d)
    assert f"card.json: {MAX_CARD_BYTES + 1} bytes, more than {MAX_CARD_BYTES}: is it the right file?" in str(
        err.value
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", 1.5, "threshold"),
        ("min_distance", 0, "min_distance"),
        # /v2/models/{name}/versions/{version}/... could not name such a version: 404 for every request.
        ("version", "", "version"),
        ("version", "1.5/rc1", "version"),
        # Answers echo it as a 64-bit integer: beyond, every request was a 500.
        ("min_distance", 10**20, "min_distance"),
        ("sha256", "abc", "sha256"),
        ("name", "Bad Name!", "name"),
        ("outputs", [], "outputs"),
    ],
)
def test_invalid_fields(
    tiny_model_dir: Path, tmp_path: Path, field: str, value: object, message: str
) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "tiny")
    raw = json.loads((d / "card.json").read_text())
    raw[field] = value
    (d / "card.json").write_text(json.dumps(raw))
    with pytest.raises(CardError, match=message):
        load_card(d)


def test_a_misspelt_field_is_refused_and_an_unknown_one_kept(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A newer training package may write fields this service does not know: they are kept. One
    that looks like a misspelt field the card lacks is refused, naming the field: ignored, a
    misspelt 'calibration' had the model report raw scores."""
    d = copy_model(tiny_model_dir, tmp_path / "tiny")
    raw = json.loads((d / "card.json").read_text())
    calibration = raw.pop("calibration", None) or {
        "signal": {"x": [0.1, 0.9], "y": [0.2, 0.8]},
        "peak": {"x": [0.1, 0.9], "y": [0.2, 0.8]},
    }
    for misspelt in ("calibraton", "Calibration"):
        (d / "card.json").write_text(json.dumps({**raw, misspelt: calibration}))
        with pytest.raises(CardError) as err:
            load_card(d)
        assert f"field {misspelt!r} is not a card field; name it 'calibration'" in str(err.value)
    (d / "card.json").write_text(json.dumps({**raw, "calibration": calibration, "calibration_notes": "v2"}))
    card = load_card(d)  # an unknown field beside the one it resembles: kept
    assert card.model_extra == {"calibration_notes": "v2"} and card.calibration is not None
    (d / "card.json").write_text(json.dumps({**raw, "sampling_rate_hz": 100}))
    assert load_card(d).model_extra == {"sampling_rate_hz": 100}


def test_card_name_must_match_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    def refusal(d: Path) -> str:
        with pytest.raises(CardError) as err:
            load_card(d)
        return str(err.value)

    d = copy_model(tiny_model_dir, tmp_path / "other")
    assert refusal(d).endswith(
        "card name 'tiny' differs from its directory 'other', the name the model is served under: "
        "set \"name\" in card.json to 'other', or rename the directory to 'tiny'"
    )
    # A copy beside its original (cp -r models/tiny models/other): the original's name is taken.
    copy_model(tiny_model_dir, tmp_path / "tiny")
    assert refusal(d).endswith(
        "card name 'tiny' differs from its directory 'other', the name the model is served under: "
        "set \"name\" in card.json to 'other'"
    )
    # Not a model's name: the card cannot take it, only the directory can change.
    d = copy_model(tiny_model_dir, tmp_path / "My Tiny")
    assert refusal(d).endswith(
        "differs from its directory 'My Tiny', the name the model is served under: rename the "
        "directory to a model's name and set \"name\" in card.json to it (a model's name is 1-64 "
        "lower-case letters, digits, '-' or '_')"
    )
    shutil.rmtree(tmp_path / "tiny")  # the card's name free: the directory can take it
    assert refusal(d).endswith(
        "differs from its directory 'My Tiny', the name the model is served under: rename the "
        "directory to 'tiny' (a model's name is 1-64 lower-case letters, digits, '-' or '_')"
    )


def test_a_card_is_written_as_strict_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    """An undefined metric (a suite without event-free signals has no AUC) or a NaN in the
    training record is written as null: JSON has no NaN, and the card reads back."""
    d = copy_model(tiny_model_dir, tmp_path / "tiny")
    card = load_card(d)
    metrics = SuiteMetrics(
        signals=4, events=4, auc=None, threshold=0.5, precision=1.0, recall=1.0, f1=1.0,
        loc_error_median=0.0, loc_error_p95=1.0, false_alarm_rate=0.0,
    )  # fmt: skip
    card = card.model_copy(
        update={"metrics": {"user": {"model": metrics}}, "training": {"val_auc": [0.9, float("nan")]}}
    )
    text = write_card(d, card).read_text()

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the card")

    doc = json.loads(text, parse_constant=refuse)
    assert doc["metrics"]["user"]["model"]["auc"] is None
    assert doc["training"]["val_auc"] == [0.9, None]
    assert load_card(d).metrics["user"]["model"].auc is None
