import json
import shutil
from pathlib import Path

import pytest

from app.core.card import CardError, load_card


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
    (d / "card.json").unlink()
    with pytest.raises(CardError, match="no model card"):
        load_card(d)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", 1.5, "threshold"),
        ("min_distance", 0, "min_distance"),
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


def test_card_name_must_match_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "other")
    with pytest.raises(CardError, match="differs from its directory"):
        load_card(d)
