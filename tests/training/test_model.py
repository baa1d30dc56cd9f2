import numpy as np
import pytest
import torch

from training import model as model_module
from training.model import (
    ROUNDING,
    LocalNorm,
    ModelConfig,
    build_model,
    centred_mean,
    macs_per_sample,
    measure_radius,
    power_of_two_scale,
)


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
        base = probe(x)
        diff = (base - probe(y)).abs()[0]
    net.float()
    assert diff[: 600 - r].max() == 0  # the running sums of the window means look back only
    # Beyond the radius an output moves only by the running sums' rounding (ROUNDING bounds it).
    assert diff[600 + r + 1 :].max() <= ROUNDING * float(base.abs().max())
    assert diff[600 - r : 600 + r + 1].max() > 1e-3  # the probe moves the outputs it reaches


@pytest.mark.parametrize("window", [1, 3, 31, 127])
@pytest.mark.parametrize("length", [1, 2, 5, 40, 200])
def test_centred_mean_is_the_average_pool(window: int, length: int) -> None:
    """The running-sum mean equals AvgPool1d without padding in the counts, edges included,
    windows longer than the signal too; in float32 even for a large offset (float64 sums)."""
    pool = torch.nn.AvgPool1d(window, 1, window // 2, count_include_pad=False)
    x = torch.randn(3, 1, length, dtype=torch.float64)
    torch.testing.assert_close(centred_mean(x, window), pool(x), rtol=1e-12, atol=1e-12)
    big = (x * 1e3 + 1e5).float()
    got = centred_mean(big, window)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, pool(big.double()).float(), rtol=1e-7, atol=0)


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
    x = torch.zeros(1, 1, 1, 600, dtype=torch.float32)  # (B, C, 1, T): the network's rows
    c = 300
    x[0, 0, 0, c - 12 : c - 12 + tpl.values.size] = torch.as_tensor(tpl.values, dtype=torch.float32)
    conv = net.encoders[0][0]
    with torch.no_grad():
        out = conv(x)[0, :, 0]
    assert int(out[0].argmax()) == c
    assert float(out[0, c]) == pytest.approx(tpl.norm, rel=1e-5)
    assert float(out[1, c]) == pytest.approx(-tpl.norm, rel=1e-5)
    assert default_first_kernel(Template(np.ones(5) * np.arange(5), center=4)) == 9


def _moving_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Centred mean over the samples that exist (AvgPool1d with count_include_pad=False)."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(x.size)
    lo, hi = np.maximum(i - w // 2, 0), np.minimum(i + w // 2 + 1, x.size)
    return (c[hi] - c[lo]) / (hi - lo)


def _veto(c: np.ndarray, reach: int, strength: float = 8.0, margin: float = 0.5) -> np.ndarray:
    """c - strength * relu(M - c - margin), M[t] the largest -c within ``reach`` of t."""
    m = np.array([(-c[max(t - reach, 0) : t + reach + 1]).max() for t in range(c.size)])
    return c - strength * np.maximum(m - c - margin, 0.0)


def test_matched_path_is_the_clipped_matched_filter() -> None:
    """With the network's own head silenced, the logit is the limiter + matched filter, computed
    here independently: (x - 127-sample mean) in noise sigmas, clipped at +-3, correlated with
    the unit-norm template centred on its event, vetoed where the inverted template fits
    better nearby, times g / (1 + g)."""
    from training.model import DeepCNN, init_from_template
    from training.scenario import Template
    from training.train import default_first_kernel

    s = np.arange(-8, 81, dtype=np.float64)
    tpl = Template(np.where(s >= 0, np.sin(2 * np.pi * s / 16) * np.exp(-s / 20), 0.0), center=12)
    cfg = ModelConfig(first_kernel=default_first_kernel(tpl), scale_window=127, scale_stride=1)
    net = DeepCNN(cfg).double().eval()
    init_from_template(net, tpl)
    assert net.matched is not None and not net.matched.weight.requires_grad
    assert float(net.matched_gain) == 0.0  # the network trains alone
    assert "matched_gain" not in dict(net.named_parameters())
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.matched_gain.fill_(0.7)
    rng = np.random.default_rng(0)
    x = 2.0 * rng.standard_normal(900)
    x[300 - 12 : 300 - 12 + tpl.values.size] += 3.0 * tpl.values  # an event on sample 300
    x[600] += 500.0  # a spike: the limiter caps it
    with torch.no_grad():
        got = net(torch.as_tensor(x)[None])[0].numpy()

    diff = np.abs(np.diff(x))
    diff = np.concatenate([diff[:1], diff])  # the first sample repeats the second's
    z = (x - _moving_mean(x, 127)) / _moving_mean(diff, 127) * np.sqrt(np.pi) / 2
    k = tpl.values / tpl.norm
    full = np.correlate(np.clip(z, -3.0, 3.0), k, mode="full")
    start = k.size - 1 - tpl.center
    c = full[start : start + x.size]
    expected = 0.7 / 1.7 * _veto(c, cfg.first_kernel // 2)
    assert not np.allclose(expected, 0.7 / 1.7 * c, atol=1e-3)  # the veto acts somewhere
    np.testing.assert_allclose(got, expected, atol=1e-5)  # the kernel is set in float32
    assert abs(int(np.argmax(got)) - 300) <= 1  # the event, not the spike


def test_matched_path_can_be_turned_off() -> None:
    net = build_model(ModelConfig(matched_mean_window=0))
    assert net.matched is None and not hasattr(net, "matched_gain")
    net = build_model(ModelConfig())
    x = torch.randn(2, 500)
    with torch.no_grad():
        before = net(x)
        net.drop_matched_path()
        after = net(x)
    assert net.matched is None and net.norm.wide_mean_window == 0
    torch.testing.assert_close(after, before)  # gain 0: dropping the path changes nothing


def test_the_veto_rejects_an_inverted_copy_but_keeps_the_upright_one() -> None:
    """An oscillating shape: the plain matched filter scores an inverted copy (a little
    shifted) almost as high as the upright one; the vetoed path scores it below the noise,
    and leaves the upright event's score as it was. With --polarity there is no veto."""
    from training.model import DeepCNN, init_from_template
    from training.scenario import Template
    from training.train import default_first_kernel

    s = np.arange(-8, 81, dtype=np.float64)
    tpl = Template(np.where(s >= 0, np.sin(2 * np.pi * s / 16) * np.exp(-s / 20), 0.0), center=12)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1200)
    for start, sign in ((300 - 12, 1.0), (800 - 12, -1.0)):  # SNR 8, upright at 300, inverted at 800
        x[start : start + tpl.values.size] += sign * 8.0 * tpl.values / tpl.norm

    def path(**kw: object) -> np.ndarray:
        net = DeepCNN(ModelConfig(first_kernel=default_first_kernel(tpl), **kw)).eval()  # type: ignore[arg-type]
        init_from_template(net, tpl)
        with torch.no_grad():
            _, m = net.parts(torch.as_tensor(x, dtype=torch.float32)[None])
        assert m is not None
        return m[0].numpy()

    plain, vetoed = path(matched_veto=0.0), path()
    up, inv = slice(290, 311), slice(700, 900)
    assert plain[inv].max() > 0.55 * plain[up].max() > 2.5  # the plain filter answers to both
    assert vetoed[up].max() == pytest.approx(plain[up].max(), abs=1e-4)
    assert vetoed[inv].max() < 1.0
    two_sided = path(matched_two_sided=True)
    assert two_sided[inv].max() > 0.9 * plain[up].max()  # --polarity: the inverted copy is an event


def typical_rows(n: int = 16, length: int = 1024) -> torch.Tensor:
    """Noise with the training scenario's gains (1e-3 ... 1e3) and offsets (-100 ... 100)."""
    torch.manual_seed(1)
    gains = torch.logspace(-3, 3, n).view(n, 1, 1)
    offsets = torch.linspace(-100, 100, n).view(n, 1, 1)
    return (gains * torch.randn(n, 1, length) + offsets).float()


def test_scaling_by_a_power_of_two_first_changes_no_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    norm = LocalNorm(31, 1016, 8, wide_mean_window=127)
    x = typical_rows()
    scaled = norm(x)
    monkeypatch.setattr(model_module, "power_of_two_scale", lambda x: torch.ones_like(x[..., :1, :1]))
    assert torch.equal(scaled, norm(x))


@pytest.mark.parametrize("exponent", [-100, -60, -20, 20, 60, 100, 110])
def test_any_float32_amplitude_normalises_as_an_ordinary_one(exponent: int) -> None:
    """Gain invariance over float32's whole range, bit for bit: before the power-of-two scale
    a first difference near 3e38 overflowed to inf, the scale's block sums from about 1e37,
    and below about 1e-30 the eps of the division flattened the signal."""
    norm = LocalNorm(31, 1016, 8, wide_mean_window=127)
    x = typical_rows()
    assert torch.equal(norm(x * 2.0**exponent), norm(x))


def test_extreme_finite_signals_normalise_to_finite_values() -> None:
    norm = LocalNorm(31, 1016, 8, wide_mean_window=127)
    big = float(np.finfo(np.float32).max)
    alternating = torch.tensor([big, -big] * 512).view(1, 1, -1)  # differences beyond float32
    subnormal = torch.full((1, 1, 1024), 1e-44)  # below float32's normal numbers
    zeros = torch.zeros(1, 1, 1024)
    for x in (alternating, subnormal, zeros):
        assert torch.isfinite(norm(x)).all()
    assert norm(alternating).abs().max() > 0.1


def test_power_of_two_scale_is_a_power_of_two_within_floats_normal_range() -> None:
    rows = torch.tensor([[3.0e38], [1.0], [3.0], [1e-30], [1e-44], [0.0]]).view(6, 1, 1)
    exponents = torch.log2(power_of_two_scale(rows)).flatten().tolist()
    assert exponents == [127.0, 0.0, 1.0, -100.0, -126.0, -126.0]


def test_measured_radius_is_not_cut_off_by_the_probe_length() -> None:
    """A 1025-sample first convolution (the longest template) without the matched-filter path
    (gain 0 drops it): the network reaches farther than half the 2048-sample probe, and the
    radius measured on it was 1031 instead of 1057, so windows of long signals were too narrow."""
    net = build_model(ModelConfig(first_kernel=1025, matched_mean_window=0))
    longer = measure_radius(net, length=8192, trials=1)
    assert longer >= 1057 and longer <= measure_radius(net, trials=1) <= longer + 8


@pytest.mark.parametrize("scale", [2.0**-80, 2.0**70])
def test_template_kernels_do_not_depend_on_the_template_units(scale: float) -> None:
    """A template in strain units (1e-23) made a NaN first convolution, one in large units (1e20)
    a zero one: the unit-norm kernel was computed in float32, whose squares vanish or overflow."""
    from pathlib import Path

    from training.model import DeepCNN, ModelConfig, init_from_template
    from training.scenario import Template
    from training.template import load_template

    tpl = load_template(Path(__file__).resolve().parents[2] / "training" / "templates" / "arrival.csv")
    nets = []
    for t in (tpl, Template(tpl.values * scale, tpl.center)):
        torch.manual_seed(0)
        nets.append(DeepCNN(ModelConfig(first_kernel=121)))
        init_from_template(nets[-1], t)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)
