"""The fully connected networks of the Improved-GAN MNIST model (Salimans et al. 2016)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gencls.nets.layers import BiasOnlyBatchNorm1d, GaussianNoise, NoiseBank, WNLinear, softplus, to_pixels


class MLPClassifier(nn.Module):
    """K-logit classifier/discriminator: input noise, weight-normalised ReLU layers with noise.

    ``forward(x)`` returns ``(logits, features)``; features are the last hidden layer's
    activations (before its noise), used by feature matching.
    """

    def __init__(self, in_features: int, num_classes: int, hidden=(1000, 500, 250, 250, 250),
                 input_noise: float = 0.3, hidden_noise: float = 0.5):
        super().__init__()
        self.input_noise = GaussianNoise(input_noise)
        dims = [in_features, *hidden]
        self.hidden = nn.ModuleList(WNLinear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.noise = nn.ModuleList(GaussianNoise(hidden_noise) for _ in hidden)
        self.out = WNLinear(dims[-1], num_classes, train_scale=True)

    def noise_dims(self) -> list[int]:
        """Widths of the inputs that get Gaussian noise in training, in the order it is added."""
        dims = [self.hidden[0].v.shape[1], *(layer.v.shape[0] for layer in self.hidden)]
        return [d for d, n in zip(dims, (self.input_noise, *self.noise)) if n.sigma > 0]

    def weights(self) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """Per layer ``(W, None, b)``, or ``(v, g/||v||, b)`` for layers that scale their outputs:
        the weight normalisation computed once, to reuse across passes with the same weights."""
        return [(layer.v, layer.scale(), layer.b) if layer.scale_outputs else (layer.weight(), None, layer.b)
                for layer in (*self.hidden, self.out)]

    def forward(self, x: torch.Tensor, weights: list | None = None,
                noise: NoiseBank | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``weights`` from ``weights()`` reuses a normalisation computed once (passes without weight
        gradients); ``noise`` draws the training noise into preallocated buffers (the same numbers
        as the default path). Either given: in-place ReLU and the layers' fast paths."""
        if weights is None and noise is None:
            h = self.input_noise(x.flatten(1))
            feat = h
            for layer, noise_layer in zip(self.hidden, self.noise):
                feat = F.relu(layer(h))
                h = noise_layer(feat)
            return self.out(h), feat
        layers = [*self.hidden, self.out]
        if weights is None:  # each layer normalises its own weights (and takes their gradients)
            def linear(i, t):
                return layers[i](t)
        else:
            def linear(i, t):
                return _linear(t, *weights[i])
        if not self.training:
            def add(t, s):
                return t
        elif noise is not None:
            add = noise.add_normal
        else:
            def add(t, s):
                return t + torch.randn_like(t) * s if s > 0 else t
        h = add(x.flatten(1), self.input_noise.sigma)
        feat = h
        for i, noise_layer in enumerate(self.noise):
            feat = linear(i, h).relu_()
            h = add(feat, noise_layer.sigma)
        return linear(len(layers) - 1, h), feat

    @torch.no_grad()
    def data_init(self, x: torch.Tensor) -> None:
        h = self.input_noise(x.flatten(1))
        for layer, noise in zip(self.hidden, self.noise):
            h = noise(F.relu(layer.data_init(h)))
        self.out.data_init(h)


def _linear(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w, b) if scale is None else torch.addcmul(b, F.linear(x, w), scale)


class MLPGenerator(nn.Module):
    """z ~ U(0,1)^nz -> dense 500 + BN + softplus -> dense 500 + BN + softplus -> WN dense + sigmoid."""

    def __init__(self, image_shape: tuple[int, int, int], nz: int = 100, hidden: int = 500):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.nz = nz
        out = math.prod(self.image_shape)
        self.fc1 = nn.Linear(nz, hidden, bias=False)
        self.bn1 = BiasOnlyBatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.bn2 = BiasOnlyBatchNorm1d(hidden)
        self.out = WNLinear(hidden, out, train_scale=True)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
        bound = math.sqrt(6.0 / (hidden + out))  # Glorot-uniform direction, as Lasagne's default
        nn.init.uniform_(self.out.v, -bound, bound)

    def sample_z(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(n, self.nz, device=device, generator=generator)

    fast_softplus = False  # True: layers.softplus (faster on the CPU, equal to float precision)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        act = softplus if self.fast_softplus else F.softplus
        h = act(self.bn1(self.fc1(z)))
        h = act(self.bn2(self.fc2(h)))
        return to_pixels(self.out(h)).view(-1, *self.image_shape)
