"""Semi-supervised VAE, model M2 of Kingma, Rezende, Mohamed & Welling 2014 ("Semi-supervised
Learning with Deep Generative Models").

- classifier q(y|x): by default the shared weight-normalised MLP classifier (Gaussian noise on
  its input and hidden layers), evaluated through an EMA of its weights; ``classifier=mlp`` gives
  the paper's instead, an MLP with the generative model's hidden sizes and activation;
- encoder q(z|x,y): an MLP on [x, one-hot y] giving a diagonal Gaussian (reparameterised);
- decoder p(x|y,z): an MLP giving Bernoulli logits of the pixels (grey levels in [0, 1] are
  soft targets), with p(z) = N(0, I) and p(y) uniform. As in the paper's code: one hidden layer
  of 500 softplus units in each (its M1+M2 run with 100 labels used 300), z of 50 dimensions.

Loss per step, with a labelled and an unlabelled batch:

    labelled_elbo_weight * mean_l[-ELBO(x, y)] + mean_u[sum_y q(y|x) (-ELBO(x, y)) - H(q(y|x))]
        + alpha * mean_l[-log q(y|x)]

where the unlabelled term decodes every image under every class (one batched pass).

The weight alpha. The paper's objective is sum_l L(x,y) + sum_u U(x) + 0.1 N E_l[-log q(y|x)]
(its code: each labelled image's log q(y|x) weighted 0.1 N / N_l); divided by N_u to put it in
batch means, that is mean_u U + (N_l / N_u) mean_l L + 0.1 (N / N_u) mean_l CE, i.e. alpha ~ 0.1
and a labelled-ELBO weight ~ 0.002 with 100 labels. The paper trains for 3,000 epochs; at that
weight the classifier is still at 70 % error after 2 epochs here. With the budgets of a
comparison (tens of epochs) alpha = 5 learned fastest of 0.1, 1, 5, 20 and 55 (validation error
after 3 epochs on MNIST with 100 labels, the README has the numbers), and the labelled ELBO
keeps weight 1. The paper's optimiser is Adam with step 3e-4; a step of 3e-3 for the encoder and
decoder (and the classifier) learns much faster per epoch here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gencls.losses import m2_negative_elbo, m2_unlabelled_loss
from gencls.methods.base import Method, register_method
from gencls.nets import (EMA, ClassConditionalDecoder, ClassConditionalEncoder, MLPClassifier, make_mlp, one_hot,
                         scale_outputs)


class _PlainClassifier(torch.nn.Module):
    """The paper's q(y|x): an MLP (no noise, no weight normalisation); ``(logits, None)`` like MLPClassifier."""

    def __init__(self, d, k, hidden, act):
        super().__init__()
        self.net = make_mlp(d, hidden, k, act)

    def forward(self, x):
        return self.net(x.flatten(1)), None


@register_method
class VAEM2(Method):
    name = "vae-m2"
    description = "semi-supervised VAE M2: q(y|x), q(z|x,y), p(x|y,z) (Kingma et al. 2014)"
    can_generate = True
    can_condition = True
    latent_distribution = "normal(0,1)"
    ood_score_name = "ELBO of log p(x) (z at its mean, y summed out with q(y|x))"
    published_results = {"mnist/100": {"error": "11.97 ± 1.71 (M2)", "source": "Kingma et al. 2014, Table 1"},
                         "mnist/1000": {"error": "3.60 ± 0.56 (M2)", "source": "Kingma et al. 2014, Table 1"}}
    default_config = {"lr": 0.003, "classifier_lr": 0.003, "beta1": 0.9, "alpha": 5.0, "nz": 50,
                      "hidden": [500], "ema_decay": 0.999, "classifier": "wn", "labelled_elbo_weight": 1.0,
                      "activation": "softplus"}

    def __init__(self, config, image_shape, num_classes):
        super().__init__(config, image_shape, num_classes)
        c = self.config
        d = math.prod(self.image_shape)
        hidden = tuple(int(h) for h in c["hidden"])
        self.nz = int(c["nz"])
        act = c["activation"]
        if c["classifier"] not in ("wn", "mlp"):
            raise ValueError(f"classifier={c['classifier']!r}: wn or mlp")
        if act not in ("softplus", "relu"):
            raise ValueError(f"activation={act!r}: softplus or relu")
        if c["classifier"] == "wn":
            self.clf = scale_outputs(MLPClassifier(d, num_classes))
        else:
            self.clf = _PlainClassifier(d, num_classes, hidden, act)
        self.enc = ClassConditionalEncoder(d, num_classes, hidden, self.nz, act)
        self.dec = ClassConditionalDecoder(self.image_shape, num_classes, self.nz, hidden[::-1], act)
        self.ema = EMA(self.clf, c["ema_decay"])
        betas = (c["beta1"], 0.999)
        self.opt = torch.optim.Adam([
            {"params": [*self.enc.parameters(), *self.dec.parameters()], "lr": c["lr"]},
            {"params": [p for p in self.clf.parameters() if p.requires_grad], "lr": c["classifier_lr"]}],
            betas=betas, fused=True)

    def optimizers(self):
        return {"all": self.opt}

    def setup(self, x):
        if hasattr(self.clf, "data_init"):
            self.clf.data_init(x)
        self.ema.reset(self.clf)

    @staticmethod
    def _sample(mu, logvar, generator=None):
        eps = torch.randn(mu.shape, device=mu.device, generator=generator)
        return mu + eps * (0.5 * logvar).exp()

    def _neg_elbo_all_classes(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """(N, K): -ELBO(x, y=k) for every class (z sampled, or its mean when ``sample`` is False)."""
        k = self.num_classes
        mu, logvar = self.enc.forward_all_classes(x)  # (N, K, nz)
        z = self._sample(mu, logvar) if sample else mu
        y = torch.eye(k, device=x.device).expand(x.shape[0], k, k)
        return m2_negative_elbo(self.dec(y, z), x.unsqueeze(1), mu, logvar, k)

    def train_step(self, x_lab, y_lab, x_unl):
        k = self.num_classes
        x_l, x_u = x_lab.flatten(1), x_unl.flatten(1)
        y1 = one_hot(y_lab, k)
        mu, logvar = self.enc(x_l, y1)
        neg_elbo_lab = m2_negative_elbo(self.dec(y1, self._sample(mu, logvar)), x_l, mu, logvar, k)
        neg_elbo_unl = self._neg_elbo_all_classes(x_u)
        logits, _ = self.clf(torch.cat([x_l, x_u]))
        logits_l, logits_u = logits.split([x_l.shape[0], x_u.shape[0]])
        loss_lab = neg_elbo_lab.mean() * self.config["labelled_elbo_weight"]
        loss_unl = m2_unlabelled_loss(neg_elbo_unl, logits_u).mean()
        loss_cls = F.cross_entropy(logits_l, y_lab)
        self.opt.zero_grad(set_to_none=True)
        (loss_lab + loss_unl + self.config["alpha"] * loss_cls).backward()
        self.optimizer_step(self.opt, {"loss_lab": loss_lab, "loss_unl": loss_unl, "loss_cls": loss_cls})
        self.ema.update(self.clf)
        return {"loss_lab": loss_lab.detach(), "loss_unl": loss_unl.detach(), "loss_cls": loss_cls.detach(),
                "train_err": (logits_l.detach().argmax(1) != y_lab).float().mean()}

    def classify(self, x):
        with self.evaluating():
            return self.ema.shadow(x)[0]

    def ood_score(self, x):
        """The ELBO of log p(x) (y summed out with q(y|x), z at its mean): higher = more alike."""
        with self.evaluating():
            x = x.flatten(1)
            return -m2_unlabelled_loss(self._neg_elbo_all_classes(x, sample=False), self.ema.shadow(x)[0])

    def sample_latent(self, n, generator=None):
        return self.dec.sample_z(n, self.device, generator)

    def decode_latent(self, z, labels=None):
        with self.evaluating():
            return self.dec.generate(z.to(self.device), labels)
