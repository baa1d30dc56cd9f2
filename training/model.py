"""The CNNs: the primer's single-layer detector and the deep fully convolutional detector.

Both start with ``LocalNorm`` so that the exported ONNX graph normalises its own input:
training and serving cannot drift apart. Every module has a finite receptive field, so a long
signal can be processed in overlapping windows with the exact whole-signal result.

Shapes: B batch, T samples, C channels.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.scenario import Template


@dataclass
class ModelConfig:
    arch: str = "deep"  # "deep" or "single"
    mean_window: int = 31  # local mean (offset) window, odd
    scale_window: int = 1016  # local mean |first difference| (gain) window, samples
    scale_stride: int = 8  # the scale is averaged over blocks of this many samples first
    kernel: int = 41  # single: the learned template's length
    channels: list[int] = field(default_factory=lambda: [8, 16, 24])  # deep: per level
    decoder: list[int] = field(default_factory=lambda: [16, 8])  # deep: per up-sampling step
    first_kernel: int = 41  # deep: the first convolution's length (a template's worth)
    kernel_size: int = 5  # deep: the other convolutions' length
    decoder_kernel: int | None = None  # deep: the decoder's convolutions' length (None: kernel_size)
    # deep: a fixed matched-filter path that can be added to the logit (see ``DeepCNN``)
    matched_mean_window: int = 127  # its local mean window, odd; 0: no such path
    matched_clip: float = 3.0  # its limiter, in noise standard deviations
    matched_two_sided: bool = False  # |correlation|: when inverted copies count as events
    # one-sided path: where an inverted copy fits better nearby (within the kernel's reach),
    # the path drops by matched_veto times the excess over matched_veto_margin (noise sigmas)
    matched_veto: float = 8.0  # 0: no veto
    matched_veto_margin: float = 0.5

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def centred_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of the ``window`` samples centred on each sample (odd ``window``), over the samples
    that exist at the edges: ``AvgPool1d(window, 1, window // 2, count_include_pad=False)``.

    Computed as the difference of a float64 running sum: onnxruntime's AveragePool adds up
    every window anew (its cost grows with the window), a running sum costs the same for any
    window. Float64 keeps the sum's rounding far below float32's: an output moves with a
    sample outside its window by about 1e-16 of the running sum, and the result is cast back
    to ``x``'s dtype. Shapes (..., T) -> (..., T).
    """
    T = x.shape[-1]
    r = window // 2
    total = F.pad(x.double(), (r + 1, r)).cumsum(-1)  # total[i]: the first i - r samples
    sums = total[..., window:] - total[..., :T]  # samples t - r ... t + r
    t = torch.arange(T, device=x.device)
    count = torch.clamp(t + r, max=T - 1) - torch.clamp(t - r, min=0) + 1
    return (sums / count).to(x.dtype)


def power_of_two_scale(x: torch.Tensor) -> torch.Tensor:
    """Per row, 2**floor(log2(largest |x|)), the exponent within float32's normal ones (-126 ...
    127; 2**-126 for a row of zeros). Shapes (B, C, T) -> (B, 1, 1).

    Dividing by it brings every row to |x| < 4 (log2 may round across an integer) without
    changing a bit of its normalised values:
    a power of two scales a float exactly, and the normalisation is a ratio of two quantities
    that scale alike. The ratio itself needs it: a first difference of two samples near
    float32's largest value overflows to inf (and inf / inf is NaN), the scale's block sums
    overflow from about 1e37, and below about 1e-30 the ``eps`` of the division flattens a
    signal. Scaled first, any finite float32 signal is normalised as one of ordinary size.
    """
    peak = x.abs().amax(dim=(-2, -1), keepdim=True)
    exponent = torch.clamp(torch.floor(torch.log2(peak)), -126.0, 127.0)  # log2(0) = -inf: -126
    return torch.pow(2.0, exponent)


class LocalNorm(nn.Module):
    """z = (x - local mean) / local mean |x[t] - x[t-1]|: invariant to gain and offset.

    The scale comes from first differences so slow baseline drift barely changes it. With
    ``scale_stride`` s > 1 the scale is averaged over blocks of s samples first (cheap wide
    windows); window starts must then be multiples of s. Edges average over the samples that
    exist (count_include_pad=False).
    """

    def __init__(
        self,
        mean_window: int,
        scale_window: int,
        scale_stride: int = 1,
        eps: float = 1e-30,
        wide_mean_window: int = 0,
    ) -> None:
        super().__init__()
        blocks = scale_window // scale_stride
        odd = all(w % 2 == 1 for w in (mean_window, wide_mean_window) if w)
        if not odd or blocks % 2 == 0 or blocks * scale_stride != scale_window:
            raise ValueError(
                "normalisation windows must be odd (the scale window an odd number of scale_stride blocks)"
            )
        self.mean_window = mean_window
        # With a wide mean window: a second output channel, (x - wider local mean) / the same scale.
        self.wide_mean_window = wide_mean_window
        self.stride = scale_stride
        self.block = nn.AvgPool1d(scale_stride, scale_stride, ceil_mode=True, count_include_pad=False)
        self.scale = nn.AvgPool1d(blocks, 1, blocks // 2, count_include_pad=False)
        self.eps = eps
        self.radius = max(mean_window // 2, wide_mean_window // 2, (blocks // 2 + 1) * scale_stride + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, T) -> (B, 1 or 2, T)
        T = x.shape[-1]
        x = x / power_of_two_scale(x)
        d = x - centred_mean(x, self.mean_window)
        if self.wide_mean_window:
            d = torch.cat([d, x - centred_mean(x, self.wide_mean_window)], dim=1)  # (B, 2, T)
        diff = torch.abs(x[..., 1:] - x[..., :-1])  # (B, 1, T-1)
        diff = torch.cat([diff[..., :1], diff], dim=-1)  # (B, 1, T): first sample repeats
        if self.stride == 1:
            scale = self.scale(diff)
        else:
            coarse = self.scale(self.block(diff))  # (B, 1, ceil(T / s))
            scale = F.interpolate(coarse, scale_factor=float(self.stride), mode="nearest")[..., :T]
        return d / (scale + self.eps)


class SingleLayer(nn.Module):
    """The primer's detector: one kernel K, bias, ReLU, then a logistic per sample.

    score(t) = logistic(w * ReLU((K * z)(t) + beta) + b); the signal's probability is the max
    over t, the primer's logistic of the max (w > 0 keeps the order).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = LocalNorm(cfg.mean_window, cfg.scale_window, cfg.scale_stride)
        self.alignment = cfg.scale_stride
        self.conv = nn.Conv1d(1, 1, cfg.kernel, padding=cfg.kernel // 2)
        self.out = nn.Conv1d(1, 1, 1)
        self.radius = self.norm.radius + cfg.kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> logits (B, T)
        z = self.norm(x.unsqueeze(1))  # (B, 1, T)
        return self.out(F.relu(self.conv(z))).squeeze(1)


def row_conv(c_in: int, c_out: int, k: int) -> nn.Conv2d:
    """A 1-D convolution over time written as a 2-D one with a 1 x k kernel, on (B, C, 1, T).

    The same weights and result as ``Conv1d(c_in, c_out, k)`` on (B, C, T); onnxruntime runs
    2-D convolutions, their pooling and up-sampling in its channel-blocked layout (NCHWc),
    which made the exported network 1.1-1.15 times faster on 1024-sample signals.
    """
    return nn.Conv2d(c_in, c_out, (1, k), padding=(0, k // 2))


def conv_block(c_in: int, c_out: int, k: int, k_first: int | None = None) -> nn.Sequential:
    k1 = k_first or k
    return nn.Sequential(row_conv(c_in, c_out, k1), nn.ReLU(), row_conv(c_out, c_out, k), nn.ReLU())


# For white noise, mean |x[t] - x[t-1]| = 2 sigma / sqrt(pi): LocalNorm's scale in noise sigmas.
SIGMA_PER_SCALE = math.sqrt(math.pi) / 2


class DeepCNN(nn.Module):
    """Conv -> ReLU -> max-pool blocks (the primer's deep CNN), then an up-sampling decoder
    with skip connections back to full resolution and a 1x1 convolution head: a logit for
    every input sample.

    With ``matched_mean_window`` > 0 there is also a fixed matched-filter path: the signal
    less a wider local mean, in noise sigmas, clipped at +-``matched_clip`` (a limiter: a
    spike counts no more than a 3-sigma sample), correlated with the unit-norm template
    (``init_from_template`` sets it; it never trains). A matched filter also answers to an
    inverted copy of an oscillating shape, a little shifted; so, unless inverted copies count
    as events, the path is vetoed where the inverted template fits better nearby: with c the
    correlation and M(t) the largest -c within the kernel's reach of t, the path is
    c - ``matched_veto`` * relu(M - c - ``matched_veto_margin``). For an upright event c
    beats M (by about a third of the event's SNR for `arrival`); for an inverted copy M beats c
    by as much; in noise alone they are close, so the margin spares faint events. The logit is
    (network + g * path) / (1 + g), g = ``matched_gain``: dividing by 1 + g keeps a large gain
    from saturating float32 probabilities at 1 (the order of the scores is that of network +
    g * path). The gain is 0 while the network trains; afterwards
    ``training.matched.choose_matched_gain`` sets it on validation data.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ch = cfg.channels
        if len(cfg.decoder) != len(ch) - 1:
            raise ValueError("decoder needs one entry per pooling step (len(channels) - 1)")
        self.norm = LocalNorm(
            cfg.mean_window, cfg.scale_window, cfg.scale_stride, wide_mean_window=cfg.matched_mean_window
        )
        self.encoders = nn.ModuleList()
        c_prev = 1
        for i, c in enumerate(ch):
            first = cfg.first_kernel if i == 0 else None
            self.encoders.append(conv_block(c_prev, c, cfg.kernel_size, first))
            c_prev = c
        self.decoders = nn.ModuleList()
        k_dec = cfg.kernel_size if cfg.decoder_kernel is None else cfg.decoder_kernel
        for j, c in enumerate(cfg.decoder):
            skip = ch[len(ch) - 2 - j]
            self.decoders.append(nn.Sequential(row_conv(c_prev + skip, c, k_dec), nn.ReLU()))
            c_prev = c
        self.head = row_conv(c_prev, 1, 1)
        self.alignment = math.lcm(2 ** (len(ch) - 1), cfg.scale_stride)
        self.matched: nn.Conv1d | None = None
        if cfg.matched_mean_window:
            k = cfg.first_kernel
            self.matched = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
            self.matched.weight.requires_grad_(False)
            self.register_buffer("matched_gain", torch.tensor(0.0))
            self.matched_clip = cfg.matched_clip
            self.matched_two_sided = cfg.matched_two_sided
            self.matched_veto = 0.0 if cfg.matched_two_sided else cfg.matched_veto
            self.matched_veto_margin = cfg.matched_veto_margin

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> logits (B, T)
        logit, matched = self.parts(x)
        if matched is None:
            return logit
        return (logit + self.matched_gain * matched) / (1.0 + self.matched_gain)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network's logit and the matched-filter path (None without one), each (B, T)."""
        T = x.shape[-1]
        zz = self.norm(x.unsqueeze(1))  # (B, 1 or 2, T)
        z = zz[:, :1]
        pad = (-T) % self.alignment
        # (B, 1, 1, T'), T' a multiple of the alignment: the network runs on rows (see row_conv)
        h = F.pad(z, (0, pad)).unsqueeze(2)
        skips = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                h = F.max_pool2d(h, (1, 2))  # (B, C, 1, T' / 2^i)
            h = enc(h)
            skips.append(h)
        for j, dec in enumerate(self.decoders):
            h = F.interpolate(h, scale_factor=(1.0, 2.0), mode="nearest")  # (B, C, 1, 2 L)
            h = dec(torch.cat([h, skips[len(skips) - 2 - j]], dim=1))
        logit = self.head(h).flatten(1)[:, :T]  # (B, T)
        if self.matched is None:
            return logit, None
        limited = torch.clamp(zz[:, 1:] * SIGMA_PER_SCALE, -self.matched_clip, self.matched_clip)
        matched = self.matched(limited).squeeze(1)  # (B, T)
        if self.matched_two_sided:
            return logit, matched.abs()
        if self.matched_veto:
            r = self.matched.kernel_size[0] // 2
            inverted = F.max_pool1d(-matched.unsqueeze(1), 2 * r + 1, 1, r).squeeze(1)  # (B, T)
            matched = matched - self.matched_veto * F.relu(inverted - matched - self.matched_veto_margin)
        return logit, matched

    def path_radius(self) -> int:
        """How far one input sample reaches into the matched-filter path (0 without one)."""
        if self.matched is None:
            return 0
        r = self.matched.kernel_size[0] // 2
        return self.norm.radius + r + (r if self.matched_veto else 0)

    def drop_matched_path(self) -> None:
        """Remove the matched-filter path (when its gain is 0): the graph is the network alone."""
        self.matched = None
        self.norm.wide_mean_window = 0
        del self.matched_gain


TEMPLATE_STRETCHES = (1.0, 0.8, 1.25)


@torch.no_grad()
def init_from_template(net: DeepCNN, template: Template) -> int:
    """Start the first convolution from the matched filter: the primer's kernel K.

    Channel pairs get +K and -K (unit norm, centred on the event sample) at the stretches in
    ``TEMPLATE_STRETCHES``, as many pairs as there are channels; training goes on from there.
    The matched-filter path, if any, gets +K for good. Returns the number of channels set.
    """
    conv = net.encoders[0][0]
    assert isinstance(conv, nn.Conv2d)
    k = conv.kernel_size[1]
    n = 0
    for f in TEMPLATE_STRETCHES:
        if n + 2 > conv.out_channels:
            break
        w = centred_kernel(template, f, k)
        for sign in (1.0, -1.0):
            conv.weight[n, 0, 0] = sign * w
            conv.bias[n] = 0.0
            n += 1
    if net.matched is not None:
        net.matched.weight[0, 0] = centred_kernel(template, 1.0, net.matched.kernel_size[0])
    return n


def centred_kernel(template: Template, stretch: float, k: int) -> torch.Tensor:
    """The template stretched by ``stretch``, unit norm, its event on the middle of ``k`` taps."""
    shape, centre = template.stretched(stretch)
    # Scaled by a power of two to order 1, exactly (the same kernel bit for bit): in float32 the
    # squares of the norm vanish below about 1e-19 (strain units: NaN) and overflow above 1e19.
    peak = float(np.max(np.abs(shape)))
    if peak > 0:
        shape = shape / 2.0 ** math.floor(math.log2(peak))
    w = torch.zeros(k)
    idx = torch.arange(shape.size) - centre + k // 2
    keep = (idx >= 0) & (idx < k)
    w[idx[keep]] = torch.as_tensor(shape, dtype=w.dtype)[keep]
    return w / w.norm()


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "deep":
        return DeepCNN(cfg)
    if cfg.arch == "single":
        return SingleLayer(cfg)
    raise ValueError(f"unknown architecture {cfg.arch!r}: use 'deep' or 'single'")


class Exported(nn.Module):
    """What ships: signal (B, T) -> probability (B,), scores (B, T)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.sigmoid(self.net(signal))
        return scores.amax(dim=-1), scores


def macs_per_sample(net: nn.Module, length: int = 4096) -> float:
    """Multiply-accumulates of the convolutions per input sample."""
    total = 0
    hooks = []

    def hook(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Conv1d | nn.Conv2d)
        k = math.prod(mod.kernel_size)
        total += out.numel() * (mod.in_channels // mod.groups) * k

    for m in net.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        net(torch.randn(1, length))
    for h in hooks:
        h.remove()
    return total / length


ROUNDING = 1e-9  # measure_radius: smaller moves of an output are rounding, not influence


def measure_radius(net: nn.Module, length: int = 2048, trials: int = 4) -> int:
    """The receptive radius: the farthest output sample that one input sample moves.

    Measured in float64 by perturbing one input at every phase of the alignment, on copies
    of the network with fresh random weights (so that trained weights that happen to be
    zero cannot hide a path) as well as on the network itself; the largest distance wins, or
    the matched-filter path's reach if that is larger. An output counts as moved when it
    moves by more than 1e-9 of the largest output: the running sums of ``centred_mean`` move
    every later output by rounding, about 1e-16 of the sum. A probe sees at most about half
    its ``length`` to each side: a radius near that is measured again on a probe twice as long.
    """
    while True:
        radius = _probe_radius(net, length, trials)
        if radius + 16 < length // 2:  # the probe positions' farthest visible output, with room
            break
        length *= 2
    # The matched-filter path's reach is known exactly; a probe can miss the veto's (a max
    # over a window moves only where the maximum moves).
    return max(radius, net.path_radius() if isinstance(net, DeepCNN) else 0)


def _probe_radius(net: nn.Module, length: int, trials: int) -> int:
    """``measure_radius`` on one probe length: the farthest output a perturbation moves."""
    radius = 0
    for trial in range(trials + 1):
        probe = copy.deepcopy(net).double().eval()
        gen = torch.Generator().manual_seed(trial)
        with torch.no_grad():
            if trial > 0:
                for p in probe.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
            x = torch.randn(1, length, generator=gen, dtype=torch.float64)
            base = probe(x)
            for pos in range(length // 2, length // 2 + 8):
                y = x.clone()
                y[0, pos] += 0.5
                moved = (probe(y) - base).abs()[0] > ROUNDING * float(base.abs().max())
                changed = torch.nonzero(moved).flatten()
                if changed.numel():
                    radius = max(radius, int((changed - pos).abs().max()))
    return radius
