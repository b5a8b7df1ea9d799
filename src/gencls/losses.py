"""Losses, all on logits (never a softmax before a cross-entropy)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Labelled images: F.cross_entropy(logits, labels).


def ssl_gan_unlabelled_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The unlabelled loss of the K-logit semi-supervised GAN (Salimans et al. 2016).

    With the fake class as an implicit logit fixed at 0, D(x) = Z/(Z+1) = sigmoid(LSE(l)),
    Z = sum_k exp(l_k). The loss is
    -1/2 mean log D(real) - 1/2 mean log(1 - D(fake))
    = -1/2 mean LSE(l_real) + 1/2 mean softplus(LSE(l_real)) + 1/2 mean softplus(LSE(l_fake)).
    """
    lse_real = torch.logsumexp(logits_real, dim=1)
    lse_fake = torch.logsumexp(logits_fake, dim=1)
    return 0.5 * (F.softplus(lse_real) - lse_real).mean() + 0.5 * F.softplus(lse_fake).mean()


def ssl_gan_real_probability(logits: torch.Tensor) -> torch.Tensor:
    """D(x) = Z/(Z+1) of the K-logit discriminator."""
    return torch.sigmoid(torch.logsumexp(logits, dim=1))


def feature_matching_loss(features_real: torch.Tensor, features_fake: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the batch means of real and generated features."""
    return (features_real.mean(0) - features_fake.mean(0)).pow(2).mean()


def real_fake_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy on real/fake logits against an all-real (1) or all-fake (0) target.

    Real: mean softplus(-l) = -mean log sigmoid(l); fake: mean softplus(l) = -mean log(1 - sigmoid(l)).
    The generator's non-saturating loss is ``real_fake_loss(logits_of_fakes, real=True)``.
    """
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
