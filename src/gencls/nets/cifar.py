"""The convolutional networks of the Improved-GAN CIFAR-10 model (Salimans et al. 2016, the authors'
``train_cifar_feature_matching.py``), for colour and bigger images.

Discriminator/classifier (``ConvNetClassifier``), on images in [0, 1]:
    input dropout 0.2, Gaussian input noise (``input_noise``, see below)
    3x3 WN conv 96, 96, 96 stride 2 (leaky ReLU 0.2), dropout 0.5
    3x3 WN conv 192, 192, 192 stride 2, dropout 0.5
    3x3 WN conv 192 (no padding), WN NIN (1x1) 192, WN NIN 192
    global average pooling -> the features (feature matching uses them)
    WN dense -> K logits (its scale trained, data-initialised to logits of std 0.1)
The weight-normalised layers have a fixed scale set by the data-dependent initialisation
(``data_init``), as the reference's ``weight_norm`` with ``train_g=False``. The reference code
regularises the input with dropout only; the Gaussian input noise the issue names is an extra,
``input_noise=0.1`` on [0, 1] pixels (0.2 on the reference's [-1, 1] scale); 0 turns it off.

Generator (``ConvNetGenerator``): z ~ U(0, 1)^100 -> dense to 4x4x512 + batch norm (shift only) +
ReLU -> 5x5 stride-2 transposed convs with batch norm + ReLU to 8x8x256 and 16x16x128 -> 5x5
stride-2 WN transposed conv to 32x32xC (its scale trained, output std 0.1 after data_init) ->
sigmoid (our pixels are in [0, 1]; the reference's tanh is the same map on [-1, 1]).

Sizes: height and width multiples of 4 and at least 12. Multiples of 8 (32x32) use the
reference's three upsamplings from (H/8, W/8); other multiples of 4 (28x28) start at (H/4, W/4)
with the last two. The widths are settings (``width`` 96 -> 96/192, ``g_width`` 128 ->
512/256/128 are the paper's).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gencls.nets.layers import GaussianNoise, WNLinear, to_pixels


def conv_size_ok(image_shape: tuple[int, int, int]) -> bool:
    _, h, w = image_shape
    return h % 4 == 0 and w % 4 == 0 and h >= 12 and w >= 12


def check_conv_size(image_shape: tuple[int, int, int]) -> None:
    if not conv_size_ok(image_shape):
        from gencls.errors import GenclsError
        _, h, w = image_shape
        raise GenclsError(f"the conv networks need height and width multiples of 4 and at least 12, the images are "
                          f"{h}x{w}: resize them with --image-size 32 or choose --arch mlp")


def _stats(a: torch.Tensor, dims) -> tuple[torch.Tensor, torch.Tensor]:
    mean = a.mean(dims)
    std = a.pow(2).mean(dims).sub(mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean, std


class _WNConvBase(nn.Module):
    """Weight-normalised (transposed) convolution: weight = v * g / ||v|| per output channel."""

    transposed = False

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 output_padding: int = 0, train_scale: bool = False, init_scale: float = 1.0, init_std: float = 0.05):
        super().__init__()
        shape = (cin, cout, kernel, kernel) if self.transposed else (cout, cin, kernel, kernel)
        self.v = nn.Parameter(torch.randn(shape) * init_std)
        self.g = nn.Parameter(torch.ones(cout), requires_grad=train_scale)
        self.b = nn.Parameter(torch.zeros(cout))
        self.stride, self.padding, self.output_padding, self.init_scale = stride, padding, output_padding, init_scale

    def weight(self) -> torch.Tensor:
        if self.transposed:  # (in, out, k, k): normalise over everything but the output channel
            norm = self.v.pow(2).sum((0, 2, 3)).sqrt()
            return self.v * (self.g / norm).view(1, -1, 1, 1)
        norm = self.v.flatten(1).norm(dim=1)
        return self.v * (self.g / norm).view(-1, 1, 1, 1)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose2d(x, weight, bias, self.stride, self.padding, self.output_padding)
        return F.conv2d(x, weight, bias, self.stride, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight(), self.b)

    @torch.no_grad()
    def data_init(self, x: torch.Tensor) -> torch.Tensor:
        """Set g, b so the pre-activations on ``x`` have mean 0 and std ``init_scale`` per channel."""
        a = self._conv(x, self.weight(), None)
        mean, std = _stats(a, (0, 2, 3))
        self.g.mul_(self.init_scale / std)
        self.b.copy_(-mean * self.init_scale / std)
        return self(x)


class WNConv2d(_WNConvBase):
    transposed = False


class WNConvTranspose2d(_WNConvBase):
    transposed = True


class BiasOnlyBatchNorm2d(nn.BatchNorm2d):
    """Batch norm with a learned shift and no learned scale (Lasagne ``batch_norm(g=None)``); the
    scale is a constant buffer of ones (see ``BiasOnlyBatchNorm1d`` for why not ``affine=False``)."""

    def __init__(self, num_features: int):
        super().__init__(num_features, affine=True)
        del self.weight
        self.register_buffer("weight", torch.ones(num_features), persistent=False)


class ConvNetClassifier(nn.Module):
    """The Improved-GAN CIFAR-10 discriminator: ``forward(x) -> (logits, pooled features)``.

    Flattened inputs (N, C*H*W) are accepted too (the MLP's calling convention).
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int = 96,
                 input_dropout: float = 0.2, input_noise: float = 0.1, dropout: float = 0.5):
        super().__init__()
        check_conv_size(image_shape)
        self.image_shape = tuple(image_shape)
        c = self.image_shape[0]
        w1, w2 = width, 2 * width
        self.input_drop = nn.Dropout(input_dropout)
        self.input_noise = GaussianNoise(input_noise)
        spec = [(c, w1, 1, 1), (w1, w1, 1, 1), (w1, w1, 2, 1), "drop",
                (w1, w2, 1, 1), (w2, w2, 1, 1), (w2, w2, 2, 1), "drop",
                (w2, w2, 1, 0)]
        layers: list[nn.Module] = []
        for s in spec:
            layers.append(nn.Dropout(dropout) if s == "drop" else WNConv2d(s[0], s[1], 3, stride=s[2], padding=s[3]))
        layers += [WNConv2d(w2, w2, 1), WNConv2d(w2, w2, 1)]  # NIN layers
        self.layers = nn.ModuleList(layers)
        self.num_features = w2
        self.out = WNLinear(w2, num_classes, train_scale=True, init_std=0.05)

    def _run(self, x: torch.Tensor, init: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim == 2:
            x = x.view(len(x), *self.image_shape)
        h = self.input_noise(self.input_drop(x))
        for layer in self.layers:
            if isinstance(layer, WNConv2d):
                h = F.leaky_relu(layer.data_init(h) if init else layer(h), 0.2)
            else:
                h = layer(h)
        feat = h.mean((2, 3))
        if init:
            self.out.data_init(feat)
            self.out.g.mul_(0.1)
            self.out.b.mul_(0.1)
        return self.out(feat), feat

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, init=False)

    @torch.no_grad()
    def data_init(self, x: torch.Tensor) -> None:
        self._run(x, init=True)


class ConvNetGenerator(nn.Module):
    """The Improved-GAN CIFAR-10 generator (z ~ U(0,1)^nz), images in [0, 1]."""

    def __init__(self, image_shape: tuple[int, int, int], nz: int = 100, width: int = 128):
        super().__init__()
        check_conv_size(image_shape)
        self.image_shape = tuple(image_shape)
        self.nz = nz
        c, h, w = self.image_shape
        n_up = 3 if h % 8 == 0 and w % 8 == 0 else 2
        chans = [4 * width, 2 * width, width][3 - n_up:]
        self.h0, self.w0, self.c0 = h >> n_up, w >> n_up, chans[0]
        self.fc = nn.Linear(nz, self.c0 * self.h0 * self.w0, bias=False)
        self.bn0 = BiasOnlyBatchNorm2d(self.c0)
        ups: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            ups += [nn.ConvTranspose2d(a, b, 5, stride=2, padding=2, output_padding=1, bias=False),
                    BiasOnlyBatchNorm2d(b), nn.ReLU()]
        self.ups = nn.Sequential(*ups)
        self.out = WNConvTranspose2d(chans[-1], c, 5, stride=2, padding=2, output_padding=1, train_scale=True,
                                     init_scale=0.1)
        for m in [self.fc, *self.ups]:
            if isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.05)

    def sample_z(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(n, self.nz, device=device, generator=generator)

    def _hidden(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn0(self.fc(z).view(-1, self.c0, self.h0, self.w0)))
        return self.ups(h)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return to_pixels(self.out(self._hidden(z)))

    @torch.no_grad()
    def data_init(self, z: torch.Tensor) -> None:
        self.out.data_init(self._hidden(z))


ARCHES = ("auto", "mlp", "conv")


def resolve_arch(arch: str, image_shape: tuple[int, int, int]) -> str:
    """"auto": the paper's MNIST MLP for one-channel images up to 28x28, the CIFAR-10 conv nets otherwise."""
    if arch not in ARCHES:
        from gencls.errors import GenclsError
        raise GenclsError(f"--arch {arch}: one of {', '.join(ARCHES)}")
    if arch != "auto":
        return arch
    c, h, w = image_shape
    return "mlp" if c == 1 and h <= 28 and w <= 28 else "conv"


def make_classifier(arch: str, image_shape: tuple[int, int, int], num_classes: int, config: dict) -> nn.Module:
    """The classifier/discriminator of improved-gan and supervised for ``arch`` ("mlp" or "conv"):
    ``forward(x) -> (logits, features)``, ``data_init(x)``."""
    import math

    from gencls.nets.mlp import MLPClassifier

    if arch == "mlp":
        return MLPClassifier(math.prod(image_shape), num_classes, hidden=tuple(config["hidden"]),
                             input_noise=float(config.get("input_noise", 0.3)),
                             hidden_noise=float(config.get("hidden_noise", 0.5)))
    return ConvNetClassifier(image_shape, num_classes, width=int(config["conv_width"]))


def make_generator(arch: str, image_shape: tuple[int, int, int], config: dict) -> nn.Module:
    from gencls.nets.mlp import MLPGenerator

    if arch == "mlp":
        return MLPGenerator(image_shape, nz=int(config["nz"]))
    return ConvNetGenerator(image_shape, nz=int(config["nz"]), width=int(config["g_width"]))
