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
    # the reference CIFAR-10 code's variant: mean absolute difference of the means
    l1 = feature_matching_loss(torch.tensor(real), torch.tensor(fake), norm="l1").item()
    assert abs(l1 - (abs(2 - 1) + abs(3 - 1)) / 2) < 1e-6


# --- autoencoder losses --------------------------------------------------------------------------

from gencls.losses import (adversarial_discriminator_loss, adversarial_generator_loss, bernoulli_nll,  # noqa: E402
                           gaussian_kl, m2_negative_elbo, m2_unlabelled_loss)


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def bce(logit, target):
    p = sigmoid(logit)
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_bernoulli_nll_sums_pixels_and_takes_grey_targets():
    logits = [[0.5, -1.0, 2.0], [0.0, 3.0, -2.0]]
    x = [[1.0, 0.0, 0.25], [0.5, 1.0, 0.0]]
    expected = [sum(bce(l, t) for l, t in zip(lr, xr)) for lr, xr in zip(logits, x)]
    got = bernoulli_nll(torch.tensor(logits), torch.tensor(x))
    assert got.shape == (2,) and torch.allclose(got, torch.tensor(expected), atol=1e-6)


def test_gaussian_kl_against_formula():
    mu, logvar = [[0.5, -1.0]], [[0.2, -0.3]]
    # KL(N(m, s^2) || N(0, 1)) = 1/2 (m^2 + s^2 - 1 - log s^2), per dimension
    expected = sum(0.5 * (m * m + math.exp(lv) - 1 - lv) for m, lv in zip(mu[0], logvar[0]))
    assert abs(gaussian_kl(torch.tensor(mu), torch.tensor(logvar)).item() - expected) < 1e-6
    assert gaussian_kl(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0


def test_m2_negative_elbo_adds_reconstruction_kl_and_class_prior():
    x_logits, x = [[1.0, -1.0]], [[1.0, 0.0]]
    mu, logvar = [[0.3]], [[-0.5]]
    k = 4
    expected = (bce(1.0, 1.0) + bce(-1.0, 0.0) + 0.5 * (0.09 + math.exp(-0.5) - 1 + 0.5) + math.log(k))
    got = m2_negative_elbo(torch.tensor(x_logits), torch.tensor(x), torch.tensor(mu), torch.tensor(logvar), k)
    assert abs(got.item() - expected) < 1e-6


def test_m2_unlabelled_loss_sums_over_classes():
    # two images, three classes: -U(x) = sum_y q(y|x) L(x,y) - H(q(y|x)) = sum_y q (L + log q)
    neg_elbo = [[100.0, 90.0, 120.0], [50.0, 50.0, 50.0]]
    logits = [[0.0, 1.0, -1.0], [2.0, 2.0, 2.0]]
    expected = []
    for lrow, crow in zip(neg_elbo, logits):
        z = sum(math.exp(c) for c in crow)
        q = [math.exp(c) / z for c in crow]
        expectation = sum(qi * li for qi, li in zip(q, lrow))
        entropy = -sum(qi * math.log(qi) for qi in q)
        expected.append(expectation - entropy)
    got = m2_unlabelled_loss(torch.tensor(neg_elbo), torch.tensor(logits))
    assert got.shape == (2,) and torch.allclose(got, torch.tensor(expected), atol=1e-4)
    # second image: uniform q, equal losses -> 50 - log 3
    assert abs(got[1].item() - (50 - math.log(3))) < 1e-4
    # it is minimised by putting q on the class with the lowest -ELBO, where it tends to that -ELBO
    confident = m2_unlabelled_loss(torch.tensor([neg_elbo[0]]), torch.tensor([[0.0, 50.0, 0.0]]))
    assert abs(confident.item() - 90.0) < 1e-4


def test_m2_unlabelled_loss_bounds_marginal():
    # with q(y|x) equal to the posterior p(y|x) proportional to exp(-L(x,y)), -U(x) = -log sum_y exp(-L(x,y))
    neg_elbo = torch.tensor([[3.0, 1.0, 2.0]])
    got = m2_unlabelled_loss(neg_elbo, -neg_elbo)
    assert abs(got.item() + math.log(sum(math.exp(-v) for v in [3.0, 1.0, 2.0]))) < 1e-5


def test_adversarial_losses_against_hand_computation():
    prior, encoded = [[2.0], [-0.5]], [[0.3], [-1.5]]
    expected_d = (bce(2.0, 1) + bce(-0.5, 1)) / 2 + (bce(0.3, 0) + bce(-1.5, 0)) / 2
    expected_g = (bce(0.3, 1) + bce(-1.5, 1)) / 2
    assert abs(adversarial_discriminator_loss(torch.tensor(prior), torch.tensor(encoded)).item() - expected_d) < 1e-6
    assert abs(adversarial_generator_loss(torch.tensor(encoded)).item() - expected_g) < 1e-6
    # stable for large logits
    assert torch.isfinite(adversarial_discriminator_loss(torch.tensor([[1e4]]), torch.tensor([[-1e4]])))


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


def test_gaussian_kl_is_fp32_for_bf16_inputs():
    """Under bf16 autocast the encoder hands bf16 mu/logvar over: the KL is still summed in fp32."""
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 50, generator=g) * 2, torch.randn(4, 50, generator=g)
    m, lv = mu.to(torch.bfloat16).double(), logvar.to(torch.bfloat16).double()
    exact = 0.5 * (m * m + lv.exp() - 1 - lv).sum(-1)
    got = gaussian_kl(mu.to(torch.bfloat16), logvar.to(torch.bfloat16))
    assert got.dtype == torch.float32 and torch.allclose(got.double(), exact, rtol=1e-6)
