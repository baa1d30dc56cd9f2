from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from app.core.card import load_card
from training.export import cpu_name, export_onnx, load_weights, parity_error, render_readme
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
    assert {"torch", "onnx", "onnxruntime", "numpy", "cpu"} <= set(card.versions)
    assert card.versions["cpu"] == cpu_name() and card.versions["cpu"] not in ("", "unknown")
    assert (tiny_model_dir / "README.md").read_text().startswith("# tiny 0.0.1")


@pytest.mark.parametrize(
    ("error", "shown"), [(4.023313522338867e-07, "4e-07"), (3.516674041748047e-06, "3.5e-06"), (0.0, "0")]
)
def test_the_readme_shows_the_parity_error_as_it_is(tiny_model_dir: Path, error: float, shown: str) -> None:
    """A tiny error, or none, as its value: at four decimals both read 0.0000."""
    card = load_card(tiny_model_dir).model_copy(update={"parity_max_abs_error": error})
    assert f"- Parity torch vs onnxruntime: max abs error {shown}.\n" in render_readme(card)


@pytest.mark.parametrize(("macs", "shown"), [(6217.0, "6217"), (6217.5, "6217.5")])
def test_the_readme_shows_the_cost_as_a_count(tiny_model_dir: Path, macs: float, shown: str) -> None:
    """A whole number of multiply-accumulates read 6217.0000."""
    card = load_card(tiny_model_dir).model_copy(update={"macs_per_sample": macs})
    assert f"- Cost: {shown} multiply-accumulates per input sample.\n" in render_readme(card)


def test_load_weights_takes_back_an_exported_network(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The initializers named net.<name> set every weight, also from 1-D convolution shapes
    (how networks before row convolutions were exported); other shapes are refused by name."""
    cfg = ModelConfig(channels=[4, 6, 8], decoder=[6, 4], first_kernel=9, scale_window=127, scale_stride=1)
    torch.manual_seed(0)
    net = build_model(cfg).eval()  # the tiny model's configuration and seed: the same weights
    net.matched_gain.fill_(0.5)  # as build_tiny_model sets it
    other = build_model(cfg)
    load_weights(other, tiny_model_dir / "model.onnx")
    for (key, a), b in zip(net.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    model = onnx.load(str(tiny_model_dir / "model.onnx"))
    for t in model.graph.initializer:
        if len(t.dims) == 4:  # a row convolution's (out, in, 1, k) -> a Conv1d's (out, in, k)
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:, :, 0], t.name))
    onnx.save(model, str(tmp_path / "one_d.onnx"))
    again = build_model(cfg)
    load_weights(again, tmp_path / "one_d.onnx")
    for (key, a), b in zip(net.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    wider = build_model(ModelConfig(channels=[4, 6, 10], decoder=[6, 4], first_kernel=9))
    with pytest.raises(ValueError, match=r"encoders\.2\.0\.weight holds 240 values, the network needs 300"):
        load_weights(wider, tiny_model_dir / "model.onnx")
