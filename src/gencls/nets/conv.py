"""Convolutional networks for small images (DCGAN-style, sized for 28x28 grayscale), shared by methods
and by the generation metrics.

- ``ConvGenerator``: z (and optionally a class) -> dense -> 7x7 maps -> two stride-2 transposed
  convolutions -> 28x28 image in [0, 1]. Batch norm + ReLU inside (DCGAN), sigmoid out.
- ``ConvDiscriminator``: two stride-2 convolutions with leaky ReLU, a shared feature vector, a
  real/fake head (one logit) and a K-class head (K logits).
- ``ConvClassifier``: a small plain CNN classifier (conv-BN-ReLU-pool x 3, dense features);
  the feature network of the generation metrics and the classifier of CAS.

Any image size whose height and width are divisible by 4 (resp. 8 for ``ConvClassifier``) works;
the widths are arguments so that methods can trade speed for capacity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gencls.nets.layers import to_pixels


def _check_size(image_shape: tuple[int, int, int], divisor: int, what: str) -> None:
    _, h, w = image_shape
    if h % divisor or w % divisor:
        raise ValueError(f"{what} needs image height and width divisible by {divisor}, got {h}x{w}")


class ConvGenerator(nn.Module):
    """DCGAN generator for small images; class-conditional when ``num_classes > 0``.

    The class enters as a learned embedding concatenated to z (AC-GAN's generator takes z and a
    one-hot class; an embedding of the same size is the same thing with fewer zeros). z ~ N(0, I).
    """

    def __init__(self, image_shape: tuple[int, int, int], nz: int = 100, num_classes: int = 0, width: int = 64,
                 embed_dim: int | None = None):
        super().__init__()
        _check_size(image_shape, 4, "ConvGenerator")
        self.image_shape = tuple(image_shape)
        self.nz, self.num_classes, self.width = nz, num_classes, width
        c, h, w = self.image_shape
        self.h0, self.w0 = h // 4, w // 4
        self.embed = nn.Embedding(num_classes, embed_dim or num_classes) if num_classes else None
        n_in = nz + (self.embed.embedding_dim if self.embed is not None else 0)
        self.fc = nn.Linear(n_in, 2 * width * self.h0 * self.w0, bias=False)
        self.bn0 = nn.BatchNorm1d(2 * width * self.h0 * self.w0)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.up2 = nn.ConvTranspose2d(width, c, 4, stride=2, padding=1)
        for m in self.modules():  # DCGAN initialisation
            if isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def sample_z(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.nz, device=device, generator=generator)

    @torch.no_grad()
    def init_output_bias(self, mean_pixel: float | torch.Tensor) -> None:
        """Set the output bias to logit(mean_pixel), so that the first images have the data's mean intensity."""
        p = torch.as_tensor(mean_pixel, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        self.up2.bias.fill_(float(torch.log(p / (1 - p))))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: labels are required")
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = F.relu(self.bn0(self.fc(z))).view(-1, 2 * self.width, self.h0, self.w0)
        h = F.relu(self.bn1(self.up1(h)))
        return to_pixels(self.up2(h))


class ConvDiscriminator(nn.Module):
    """DCGAN discriminator with a real/fake head and a K-class head (AC-GAN); no batch norm.

    Stabiliser: spectral norm on every layer that feeds the real/fake logit (the two
    convolutions, the dense layer and the real/fake head). It bounds the discriminator's
    Lipschitz constant, so its gradients to the generator stay informative and the GAN does not
    collapse early; and unlike batch norm it does not mix statistics of real and generated
    batches, so the classifier behaves the same in training and at test time (without it, a short
    AC-GAN run on MNIST collapsed to dim, near-identical blobs per class). The class head is
    left unnormalised: a Lipschitz bound there would only cap how confident the classifier can be.
    Dropout on the features regularises the classifier when labels are few.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int = 64, features: int = 256,
                 dropout: float = 0.3, spectral: bool = True):
        super().__init__()
        _check_size(image_shape, 4, "ConvDiscriminator")
        c, h, w = image_shape
        sn = spectral_norm if spectral else (lambda m: m)
        self.conv1 = sn(nn.Conv2d(c, width, 4, stride=2, padding=1))
        self.conv2 = sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1))
        self.fc = sn(nn.Linear(2 * width * (h // 4) * (w // 4), features))
        self.drop = nn.Dropout(dropout)
        self.real_fake = sn(nn.Linear(features, 1))
        self.classes = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.leaky_relu(self.conv2(h), 0.2)
        return F.leaky_relu(self.fc(h.flatten(1)), 0.2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (real/fake logits (N,), class logits (N, K))."""
        f = self.drop(self.features(x))
        return self.real_fake(f).squeeze(1), self.classes(f)


class ConvClassifier(nn.Module):
    """Small CNN classifier: 3 x (3x3 conv, batch norm, ReLU, 2x2 max-pool), dense features, logits.

    ``forward(x)`` returns logits; ``features(x)`` the penultimate activations (``num_features``).
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int = 32, num_features: int = 128,
                 dropout: float = 0.3):
        super().__init__()
        c, h, w = image_shape
        chans = [c, width, 2 * width, 4 * width]
        blocks = []
        for a, b in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.body = nn.Sequential(*blocks)
        self.num_features = num_features
        self.fc = nn.Linear(chans[-1] * (h // 8) * (w // 8), num_features)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.body(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.features(x)))
