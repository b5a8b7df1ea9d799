"""Network blocks shared by methods."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GaussianNoise(nn.Module):
    """Adds N(0, sigma^2) noise in training mode; identity in eval mode."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sigma > 0:
            return x + torch.randn_like(x) * self.sigma
        return x

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) as relu(x) + log(1 + e^-|x|): on the CPU about 3x faster forward and backward
    than ``F.softplus``, whose ``log1p`` is not vectorised (differs by < 1e-6; for x < -17 it
    gives 0 instead of e^x < 4e-8). On CUDA, where one kernel beats five, it is ``F.softplus``."""
    if x.is_cuda:
        return F.softplus(x)
    return x.relu() + x.abs().neg_().exp().add(1).log()


class NoiseBank:
    """Preallocated random buffers, refilled in place each use (``normal_``/``uniform_``).

    ``add_normal(x, sigma)`` is ``x + sigma * randn_like(x)`` and ``uniform(shape)`` is
    ``torch.rand(shape)``: the same draws from the same generator in the same order, without a
    new random tensor each call. A buffer is never saved for backward (addition does not keep
    its inputs), so refilling it later is safe.
    """

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def _get(self, kind: str, shape, like: torch.Tensor | None = None, device=None) -> torch.Tensor:
        dtype = like.dtype if like is not None else torch.float32
        device = like.device if like is not None else device
        key = (kind, tuple(shape), dtype, str(device))
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    def add_normal(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if sigma <= 0:
            return x
        return torch.add(x, self._get("normal", x.shape, like=x).normal_(), alpha=sigma)

    def uniform(self, shape, device=None) -> torch.Tensor:
        return self._get("uniform", shape, device=device).uniform_()


class WNLinear(nn.Module):
    """Weight-normalised dense layer, W = v * g / ||v|| (row-wise), as in Salimans & Kingma 2016.

    ``data_init(x)`` sets g and b so that the pre-activations on ``x`` have zero mean and unit
    variance per unit (the data-dependent initialisation of the Improved-GAN code). The scale g
    is trainable only if ``train_scale`` (the Improved-GAN MNIST discriminator trains it only in
    the output layer); otherwise it is fixed after the data-dependent initialisation.
    """

    def __init__(self, in_features: int, out_features: int, train_scale: bool = False,
                 init_std: float = 0.1):
        super().__init__()
        self.v = nn.Parameter(torch.randn(out_features, in_features) * init_std)
        self.g = nn.Parameter(torch.ones(out_features), requires_grad=train_scale)
        self.b = nn.Parameter(torch.zeros(out_features))

    scale_outputs = False  # True: scale the outputs (x v^T) * g/||v|| instead of forming W (faster, same map)

    def scale(self) -> torch.Tensor:
        return self.g / self.v.norm(dim=1)

    def weight(self) -> torch.Tensor:
        return self.v * self.scale().unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_outputs:
            return torch.addcmul(self.b, F.linear(x, self.v), self.scale())
        return F.linear(x, self.weight(), self.b)

    @torch.no_grad()
    def data_init(self, x: torch.Tensor) -> torch.Tensor:
        """Initialise g, b from a batch; returns the normalised pre-activations."""
        a = F.linear(x, self.weight())
        mean, std = a.mean(0), a.pow(2).mean(0).sub(a.mean(0).pow(2)).clamp_min(1e-12).sqrt()
        self.g.div_(std)
        self.b.copy_(-mean / std)
        return (a - mean) / std


class BiasOnlyBatchNorm1d(nn.BatchNorm1d):
    """Batch norm with a learned shift but no learned scale (Lasagne ``batch_norm(g=None)``).

    The scale is a constant buffer of ones rather than ``affine=False``: cuDNN's batch-norm
    backward fails under ``torch.autograd.grad`` when the layer has no weight and bias.
    """

    def __init__(self, num_features: int):
        super().__init__(num_features, affine=True)
        del self.weight
        self.register_buffer("weight", torch.ones(num_features), persistent=False)
