"""Each loss against a hand computation on tiny tensors."""
import math

import torch
import torch.nn.functional as F

from gencls.losses import feature_matching_loss, real_fake_loss, ssl_gan_real_probability, ssl_gan_unlabelled_loss


def lse(row):
    return math.log(sum(math.exp(v) for v in row))


def softplus(v):
    return math.log1p(math.exp(v))


def test_unlabelled_loss_matches_hand_computation():
    real = [[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]]
    fake = [[-1.0, -3.0, 2.0], [-4.0, -4.0, -4.0]]
    # -1/2 mean LSE(real) + 1/2 mean softplus(LSE(real)) + 1/2 mean softplus(LSE(fake))
    expected = (-0.5 * (lse(real[0]) + lse(real[1])) / 2
                + 0.5 * (softplus(lse(real[0])) + softplus(lse(real[1]))) / 2
                + 0.5 * (softplus(lse(fake[0])) + softplus(lse(fake[1]))) / 2)
    got = ssl_gan_unlabelled_loss(torch.tensor(real), torch.tensor(fake))
    assert abs(got.item() - expected) < 1e-6


def test_unlabelled_loss_is_binary_cross_entropy_of_d():
    # D(x) = Z / (Z + 1): the loss is -1/2 log D(real) - 1/2 log(1 - D(fake))
    real, fake = [[0.3, 1.2]], [[-0.7, 0.1]]
    z_r = sum(math.exp(v) for v in real[0])
    z_f = sum(math.exp(v) for v in fake[0])
    expected = -0.5 * math.log(z_r / (z_r + 1)) - 0.5 * math.log(1 - z_f / (z_f + 1))
    assert abs(ssl_gan_unlabelled_loss(torch.tensor(real), torch.tensor(fake)).item() - expected) < 1e-6
    assert abs(ssl_gan_real_probability(torch.tensor(real)).item() - z_r / (z_r + 1)) < 1e-6


def test_unlabelled_loss_is_stable_for_large_logits():
    big = torch.tensor([[500.0, 0.0]])
    small = torch.tensor([[-500.0, -500.0]])
    loss = ssl_gan_unlabelled_loss(big, small)
    assert torch.isfinite(loss) and loss.item() < 1e-6


def test_labelled_loss_is_cross_entropy_on_logits():
    logits = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
    labels = [0, 2]
    expected = sum(lse(row) - row[y] for row, y in zip(logits, labels)) / 2
    got = F.cross_entropy(torch.tensor(logits), torch.tensor(labels))
    assert abs(got.item() - expected) < 1e-6


def test_feature_matching_loss():
    real = [[1.0, 2.0], [3.0, 4.0]]  # mean (2, 3)
    fake = [[0.0, 0.0], [2.0, 2.0]]  # mean (1, 1)
    expected = ((2 - 1) ** 2 + (3 - 1) ** 2) / 2
    assert abs(feature_matching_loss(torch.tensor(real), torch.tensor(fake)).item() - expected) < 1e-6


def test_real_fake_loss_is_binary_cross_entropy_on_logits():
    logits = [2.0, -1.0, 0.0]
    sig = [1 / (1 + math.exp(-v)) for v in logits]
    real = -sum(math.log(p) for p in sig) / 3
    fake = -sum(math.log(1 - p) for p in sig) / 3
    assert abs(real_fake_loss(torch.tensor(logits), real=True).item() - real) < 1e-6
    assert abs(real_fake_loss(torch.tensor(logits), real=False).item() - fake) < 1e-6
    # stable where sigmoid saturates
    assert torch.isfinite(real_fake_loss(torch.tensor([-200.0]), real=True))
    assert abs(real_fake_loss(torch.tensor([-200.0]), real=True).item() - 200.0) < 1e-3
