"""The tensors an ONNX file keeps in other files ("external data"), and OnnxModel's refusal of
a model that has any: its sha256 covers model.onnx alone."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx.external_data_helper import uses_external_data

from app.core.card import CardError
from app.core.model import OnnxModel
from app.core.onnx_file import external_tensors

ROOT = Path(__file__).resolve().parents[2]


def with_external_data(source: Path, target: Path, *, attributes: bool = True) -> Path:
    """A copy of a model directory whose model.onnx keeps its tensors in ``weights.bin`` beside
    it (constants too, with ``attributes``), its card's sha256 that of the new model.onnx."""
    shutil.copytree(source, target)
    model = onnx.load(target / "model.onnx")
    onnx.save_model(
        model,
        target / "model.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
        convert_attribute=attributes,
    )
    card = json.loads((target / "card.json").read_text())
    card["sha256"] = hashlib.sha256((target / "model.onnx").read_bytes()).hexdigest()
    (target / "card.json").write_text(json.dumps(card))
    return target


@pytest.mark.parametrize("attributes", [False, True])
def test_external_tensors_are_the_ones_onnx_finds(
    tiny_model_dir: Path, tmp_path: Path, attributes: bool
) -> None:
    model_dir = with_external_data(tiny_model_dir, tmp_path / "tiny", attributes=attributes)
    data = (model_dir / "model.onnx").read_bytes()
    found = external_tensors(data)
    graph = onnx.load(model_dir / "model.onnx", load_external_data=False).graph  # no subgraphs
    tensors = [*graph.initializer, *(a.t for n in graph.node for a in n.attribute if a.HasField("t"))]
    expected = sorted(t.name for t in tensors if uses_external_data(t))
    assert expected and sorted(name for name, _ in found) == expected
    assert {location for _, location in found} == {"weights.bin"}


@pytest.mark.parametrize("name", ["bump", "arrival"])
def test_the_shipped_models_keep_every_tensor_inside(name: str) -> None:
    assert external_tensors((ROOT / "models" / name / "model.onnx").read_bytes()) == []


@pytest.mark.parametrize("data", [b"", b"\xff" * 12, b"not protobuf at all", b"\x0a\x80"])
def test_bytes_that_are_not_protobuf_have_none(data: bytes) -> None:
    assert external_tensors(data) == []  # onnxruntime refuses them, naming what is wrong


def test_a_model_with_external_data_is_refused(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused, saying why and what to do, though its card's sha256 matches and its weights lie
    beside it, in the working directory even: onnxruntime, given the bytes, looks for them
    there, or fails ("model_path must not be empty") when an optimisation reads them."""
    model_dir = with_external_data(tiny_model_dir, tmp_path / "tiny", attributes=False)  # as torch does
    monkeypatch.chdir(model_dir)
    with pytest.raises(CardError) as err:
        OnnxModel(model_dir)
    message = str(err.value)
    assert "kept outside the file (in 'weights.bin')" in message, message
    assert "export the model with its weights inside the file" in message
    with pytest.raises(CardError, match="kept outside the file"):
        OnnxModel(model_dir, verify=False)
