"""Fully connected blocks shared by the autoencoder methods (semi-supervised VAE, adversarial
autoencoder): a plain MLP, an encoder conditioned on a class, a decoder from (class, z)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gencls.nets.layers import Softplus, to_pixels

_ACTIVATIONS = {"relu": nn.ReLU, "softplus": Softplus, "leaky_relu": lambda: nn.LeakyReLU(0.2)}


def make_mlp(in_features: int, hidden: tuple[int, ...] | list[int], out_features: int,
        activation: str = "relu") -> nn.Sequential:
    """Linear layers with ``activation`` between them (none after the last)."""
    act = _ACTIVATIONS[activation]
    dims = [in_features, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(dims[-1], out_features))
    return nn.Sequential(*layers)


class ClassConditionalEncoder(nn.Module):
    """q(z | x, y): an MLP on the concatenation [x, one-hot y] giving a Gaussian (mean, log-variance).

    The first layer is split into an x part and a y part, W [x; y] = W_x x + W_y y, so that
    ``forward_all_classes`` encodes every image under every class for the price of one
    pass over x (the sum over classes of the M2 unlabelled loss).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...], nz: int,
                 activation: str = "softplus"):
        super().__init__()
        self.num_classes, self.nz = num_classes, nz
        self.fx = nn.Linear(in_features, hidden[0])
        self.fy = nn.Linear(num_classes, hidden[0], bias=False)
        self.act = _ACTIVATIONS[activation]()
        self.rest = make_mlp(hidden[0], hidden[1:], 2 * nz, activation)

    def _head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.rest(self.act(h)).chunk(2, dim=-1)
        return mu, logvar

    def forward(self, x: torch.Tensor, y_onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._head(self.fx(x.flatten(1)) + self.fy(y_onehot))

    def forward_all_classes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, K, nz) means and log-variances of q(z | x, y=k) for every class k."""
        hx = self.fx(x.flatten(1))  # (N, H)
        hy = self.fy.weight.t()  # (K, H): W_y e_k
        return self._head(hx.unsqueeze(1) + hy.unsqueeze(0))


class ClassConditionalDecoder(nn.Module):
    """p(x | y, z): an MLP on [one-hot y, z] giving per-pixel logits (Bernoulli) of an image."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, nz: int, hidden: tuple[int, ...],
                 activation: str = "softplus"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.num_classes, self.nz = num_classes, nz
        self.net = make_mlp(num_classes + nz, hidden, math.prod(self.image_shape), activation)

    def forward(self, y_onehot: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits of shape (..., C*H*W); ``images`` turns them into pictures."""
        return self.net(torch.cat([y_onehot, z], dim=-1))

    def images(self, y_onehot: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return to_pixels(self(y_onehot, z)).view(-1, *self.image_shape)

    def sample_z(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Style vectors from the prior N(0, I)."""
        return torch.randn(n, self.nz, device=device, generator=generator)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images from style vectors and classes (every class in turn when not given)."""
        if labels is None:
            labels = balanced_labels(len(z), self.num_classes, z.device)
        return self.images(one_hot(labels.to(z.device), self.num_classes), z)


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(y.long(), num_classes).float()


def balanced_labels(n: int, num_classes: int, device=None) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ... (n of them): a sample grid with every class in each row."""
    return torch.arange(n, device=device) % num_classes
