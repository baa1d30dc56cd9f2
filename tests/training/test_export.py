from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from app.core.card import load_card
from training.export import export_onnx, parity_error
from training.model import Exported, ModelConfig, build_model


def test_exported_graph_checks_and_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = build_model(ModelConfig()).eval()
    path = tmp_path / "model.onnx"
    export_onnx(net, path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["signal"]
    assert [o.name for o in model.graph.output] == ["probability", "scores"]
    assert parity_error(net, path) <= 1e-4
    assert path.stat().st_size < 2_000_000
    # Dynamic batch and length axes: several shapes through one session.
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 16), (5, 333), (2, 4096)]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        p, s = sess.run(None, {"signal": x})
        with torch.no_grad():
            _pt, st = Exported(net)(torch.from_numpy(x))
        assert p.shape == shape[:1] and s.shape == shape
        np.testing.assert_allclose(s, st.numpy(), atol=1e-4)
        np.testing.assert_allclose(p, s.max(axis=1), atol=1e-7)


def test_card_written_beside_the_model(tiny_model_dir: Path) -> None:
    card = load_card(tiny_model_dir)
    assert card.opset >= 17
    assert card.template is not None and card.template_center == 20
    assert {"torch", "onnx", "onnxruntime", "numpy"} <= set(card.versions)
    assert (tiny_model_dir / "README.md").read_text().startswith("# tiny 0.0.1")
