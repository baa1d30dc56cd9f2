"""A model.onnx that keeps its tensors in other files (ONNX external data) loads them from its
own directory, as it did when sessions were made from the file's path."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.core.model import InferenceOptions, OnnxModel
from app.core.registry import Registry

onnx = pytest.importorskip("onnx")  # the training extra: how such a file is made


def with_external_data(source: Path, target: Path) -> Path:
    """A copy of a model directory whose model.onnx keeps its initializers in ``weights.bin``
    beside it (as torch's exporter does; constants kept in the graph: onnxruntime refuses
    constants kept outside, from a path as from bytes), its card's sha256 that of the new file."""
    shutil.copytree(source, target)
    model = onnx.load(target / "model.onnx")
    onnx.save_model(
        model,
        target / "model.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
        convert_attribute=False,
    )
    card = json.loads((target / "card.json").read_text())
    card["sha256"] = hashlib.sha256((target / "model.onnx").read_bytes()).hexdigest()
    (target / "card.json").write_text(json.dumps(card))
    return target


def test_a_model_with_external_data_loads_them_from_its_directory(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = with_external_data(tiny_model_dir, tmp_path / "tiny")
    assert (model_dir / "weights.bin").is_file()
    monkeypatch.chdir(tmp_path)  # not the model's directory
    options = InferenceOptions(window=1024)
    x = np.random.default_rng(0).standard_normal((2, 3000)).astype(np.float32)
    expected = OnnxModel(tiny_model_dir, options).run(x)
    np.testing.assert_array_equal(OnnxModel(model_dir, options).run(x), expected)


def test_a_load_failure_names_no_path_outside_model_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A model directory may be a symbolic link to one elsewhere (models/bump -> a volume of
    versions); onnxruntime names the files it cannot read by their real path, which /readyz,
    answered to anyone, showed."""
    elsewhere = with_external_data(tiny_model_dir, tmp_path / "volume" / "tiny-0.0.1")
    (elsewhere / "weights.bin").unlink()
    root = tmp_path / "models"
    root.mkdir()
    (root / "tiny").symlink_to(elsewhere)
    registry = Registry(root, InferenceOptions(window=1024))
    registry.load_all()
    (problem,) = registry.problems()
    assert str(tmp_path) not in problem
    assert '"MODEL_DIR/tiny/weights.bin"' in problem
