import numpy as np
import pytest
import torch

from training.model import LocalNorm, ModelConfig, build_model, macs_per_sample, measure_radius


@pytest.fixture(scope="module", params=["deep", "single"])
def net(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=request.param)).eval()


@pytest.mark.parametrize("length", [16, 17, 18, 19, 64, 257, 1001])
def test_any_length(net: torch.nn.Module, length: int) -> None:
    with torch.no_grad():
        assert net(torch.randn(3, length)).shape == (3, length)


def test_gain_and_offset_invariance(net: torch.nn.Module) -> None:
    x = torch.randn(2, 700, dtype=torch.float64)
    probe = net.double()
    with torch.no_grad():
        ref = probe(x)
        for g, c in [(1e-3, 100.0), (1e3, -100.0), (7.0, 3.0)]:
            np.testing.assert_allclose(probe(g * (x + c)).numpy(), ref.numpy(), atol=1e-6)
    net.float()


def test_local_norm_is_local() -> None:
    norm = LocalNorm(31, 127)
    x = torch.randn(1, 1, 1000, dtype=torch.float64)
    y = x.clone()
    y[..., 900:] += 1e4  # far away: cannot change the start
    np.testing.assert_allclose(norm(x)[..., :700].numpy(), norm(y)[..., :700].numpy())


def test_receptive_radius_bounds_the_influence(net: torch.nn.Module) -> None:
    r = measure_radius(net)
    assert 20 < r < 700
    x = torch.randn(1, 1200, dtype=torch.float64)
    y = x.clone()
    y[0, 600] += 5.0
    probe = net.double()
    with torch.no_grad():
        diff = (probe(x) - probe(y)).abs()[0]
    net.float()
    assert diff[: 600 - r].max() == 0 and diff[600 + r + 1 :].max() == 0


def test_macs_budget() -> None:
    assert macs_per_sample(build_model(ModelConfig())) <= 20_000
    assert macs_per_sample(build_model(ModelConfig(arch="single"))) == 42.0


def test_first_layer_starts_from_the_matched_filter() -> None:
    """init_from_template: channel 0 correlates with the unit-norm template, centred on its event."""
    from training.model import DeepCNN, ModelConfig, init_from_template
    from training.scenario import Template
    from training.train import default_first_kernel

    s = np.arange(-8, 81, dtype=np.float64)
    tpl = Template(np.where(s >= 0, np.sin(2 * np.pi * s / 16) * np.exp(-s / 20), 0.0), center=12)
    k = default_first_kernel(tpl)
    assert k == 2 * 76 + 1  # the whole template fits, centred on sample 12
    net = DeepCNN(ModelConfig(first_kernel=k))
    assert init_from_template(net, tpl) == 6  # +-K at three stretches, of 8 channels
    x = torch.zeros(1, 1, 600, dtype=torch.float32)
    c = 300
    x[0, 0, c - 12 : c - 12 + tpl.values.size] = torch.as_tensor(tpl.values, dtype=torch.float32)
    conv = net.encoders[0][0]
    with torch.no_grad():
        out = conv(x)[0]
    assert int(out[0].argmax()) == c
    assert float(out[0, c]) == pytest.approx(tpl.norm, rel=1e-5)
    assert float(out[1, c]) == pytest.approx(-tpl.norm, rel=1e-5)
    assert default_first_kernel(Template(np.ones(5) * np.arange(5), center=4)) == 9
