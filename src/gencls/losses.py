"""Losses, all on logits (never a softmax before a cross-entropy)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gencls.nets.layers import softplus

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


def feature_matching_loss(features_real: torch.Tensor, features_fake: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Difference between the batch means of real and generated features: their mean squared
    difference (``"l2"``, the paper's ||.||^2 and the reference MNIST code) or mean absolute
    difference (``"l1"``, the reference CIFAR-10 code)."""
    d = features_real.mean(0) - features_fake.mean(0)
    return d.abs().mean() if norm == "l1" else d.pow(2).mean()


# --- autoencoders: semi-supervised VAE (Kingma et al. 2014, M2) and adversarial autoencoder ---------

def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | logits) of independent Bernoulli pixels, summed over the last dimension.

    ``x`` may hold grey levels in [0, 1] (the cross-entropy with a soft target); broadcasts.
    """
    x = x.expand_as(logits)
    if logits.is_cuda:
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    logits = logits.float()  # as autocast runs the cross-entropy: fp32
    return (softplus(logits) - logits * x).sum(-1)  # the same on the CPU, without its scalar log1p: 3x faster


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over the last dimension, in fp32 (under bf16
    autocast the encoder's outputs are bf16: a sum of ~50 terms of size 1-10 would keep 2-3 digits)."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def m2_negative_elbo(x_logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """-ELBO(x, y) = -E_q(z|x,y)[log p(x|y,z)] + KL(q(z|x,y) || p(z)) - log p(y), with p(y) uniform.

    One reparameterised sample of z gives ``x_logits``; the KL is analytic. Shape: the batch
    shape of ``x_logits`` without the pixel dimension, e.g. (N,) or (N, K).
    """
    return bernoulli_nll(x_logits, x) + gaussian_kl(mu, logvar) + math.log(num_classes)


def m2_unlabelled_loss(neg_elbo: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
    """-U(x) = sum_y q(y|x) (-ELBO(x, y)) - H(q(y|x)) = sum_y q(y|x) (-ELBO(x, y) + log q(y|x)).

    ``neg_elbo``: (N, K), -ELBO of each image under each class; ``class_logits``: (N, K) of q(y|x).
    Returns (N,): an upper bound on -log p(x).
    """
    log_q = F.log_softmax(class_logits, dim=1)
    return (log_q.exp() * (neg_elbo + log_q)).sum(1)


def adversarial_discriminator_loss(logits_prior: torch.Tensor, logits_encoded: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits: samples of the prior are 'real' (1), encoder codes 'fake' (0)."""
    return (F.binary_cross_entropy_with_logits(logits_prior, torch.ones_like(logits_prior))
            + F.binary_cross_entropy_with_logits(logits_encoded, torch.zeros_like(logits_encoded)))


def adversarial_generator_loss(logits_encoded: torch.Tensor) -> torch.Tensor:
    """The encoder's (non-saturating) loss: -log D(code), i.e. BCE of its codes against 'real'."""
    return F.binary_cross_entropy_with_logits(logits_encoded, torch.ones_like(logits_encoded))


def real_fake_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy on real/fake logits against an all-real (1) or all-fake (0) target.

    Real: mean softplus(-l) = -mean log sigmoid(l); fake: mean softplus(l) = -mean log(1 - sigmoid(l)).
    The generator's non-saturating loss is ``real_fake_loss(logits_of_fakes, real=True)``.
    """
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
