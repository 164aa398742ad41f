"""The StyleGAN building blocks (models): equalised layers, modulated convolutions, D blocks.

Every weight is stored N(0, 1) and scaled at run time by He's constant (equalised learning rate,
Karras et al. 2018), so Adam's per-parameter step means the same for every layer. A synthesis
layer modulates its convolution by a style (an affine map of w, bias 1), demodulates it (each
output channel divided by the norm its modulated weights would have) and adds per-pixel noise
scaled by a learned strength. The modulation is applied to the activations rather than to
per-sample weights (StyleGAN2-ADA's "non-fused" path): the same arithmetic, but one ordinary
batched convolution instead of a grouped one, which is what a CPU runs fast.

Up- and down-sampling are bilinear ×2 and 2×2 average pooling: smooth, cheap, and every op here
has a second derivative (R1 differentiates the discriminator's gradient)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
NOISE_MODES = ("random", "const", "none")


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU scaled by √2, so activations keep unit variance (StyleGAN's `lrelu`)."""
    return F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN


def upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


class EqualLinear(nn.Module):
    """A fully connected layer with equalised learning rate; `lr_mult` slows it (the mapping
    network's 0.01) by storing weights larger and scaling them down at run time."""

    def __init__(self, in_features: int, out_features: int, activation: bool = False,
                 bias_init: float = 0.0, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_mult))
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.lr_mult = lr_mult
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mult)
        return lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """A convolution with equalised learning rate; `down` halves the input first (avg-pool)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 activation: bool = True, down: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.activation, self.down, self.padding = activation, down, kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = downsample(x)
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        return lrelu(x) if self.activation else x


def draw_noise(shape: tuple[int, int, int, int], noise_mode: str, const: torch.Tensor,
               generators: list[torch.Generator] | None, device) -> torch.Tensor | None:
    """The noise image of one layer: fresh N(0, 1) (from each sample's own generator when
    given, so a sample does not depend on its batch), the layer's fixed buffer, or none."""
    if noise_mode == "none":
        return None
    if noise_mode == "const":
        return const[None, None]
    if noise_mode != "random":
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
    n, _, h, w = shape
    if generators is None:
        return torch.randn((n, 1, h, w), device=device)
    if len(generators) != n:
        raise ValueError(f"{len(generators)} noise generators for a batch of {n}")
    return torch.cat([torch.randn((1, 1, h, w), generator=g) for g in generators]).to(device)


class SynthesisLayer(nn.Module):
    """A style-modulated, demodulated 3×3 convolution (optionally after a ×2 upsampling), then
    noise, bias and the activation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: bool = False, kernel: int = 3) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.up, self.padding, self.resolution = up, kernel // 2, resolution

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                generators: list[torch.Generator] | None = None) -> torch.Tensor:
        styles = self.affine(w)                                   # N × in
        if self.up:
            x = upsample(x)
        weight = self.weight * self.weight_gain                   # out × in × k × k
        x = F.conv2d(x * styles[:, :, None, None], weight, padding=self.padding)
        # demodulation: 1/‖w_o · s‖ per sample and output channel, Σ_i s_i² Σ_k w_oik²
        dcoefs = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()
        x = x * dcoefs[:, :, None, None]
        noise = draw_noise(tuple(x.shape), noise_mode, self.noise_const, generators, x.device)
        if noise is not None:
            x = x + noise * self.noise_strength
        return lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    """A modulated 1×1 convolution to RGB (no demodulation, no activation)."""

    def __init__(self, in_channels: int, w_dim: int) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        return F.conv2d(x * styles[:, :, None, None], self.weight, self.bias)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: the learned constant (first block) or an
    upsampling convolution, a second convolution, and its RGB output added to the upsampled
    RGB of the blocks before it (the "skip" generator)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 first: bool) -> None:
        super().__init__()
        self.first = first
        if first:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True)
            self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        self.torgb = ToRGB(out_channels, w_dim)
        self.num_conv = 1 if first else 2

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str, generators: list[torch.Generator] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """`ws`: N × (num_conv + 1) × w_dim; the last one styles the RGB output (and the next
        block's first convolution, as in StyleGAN2)."""
        i = 0
        if self.first:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, generators)
            i = 1
        x = self.conv1(x, ws[:, i], noise_mode, generators)
        rgb = self.torgb(x, ws[:, i + 1])
        img = rgb if img is None else upsample(img) + rgb
        return x, img


class DiscriminatorBlock(nn.Module):
    """A residual block: two 3×3 convolutions (the second at half resolution) beside a 1×1
    skip at half resolution, summed and scaled by √½."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False,
                                down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


class MinibatchStd(nn.Module):
    """Appends one channel: the standard deviation of every feature over groups of `group`
    samples, averaged (StyleGAN's minibatch-stddev); a group is the largest divisor of the
    batch up to `group`, so any batch size works."""

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = math.gcd(self.group, n)
        y = x.reshape(g, n // g, c, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()   # n/g × c × h × w
        y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)
