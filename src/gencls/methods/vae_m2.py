"""Semi-supervised VAE, model M2 of Kingma, Rezende, Mohamed & Welling 2014 ("Semi-supervised
Learning with Deep Generative Models").

- classifier q(y|x): the shared weight-normalised MLP classifier (with its Gaussian noise),
  evaluated through an EMA of its weights;
- encoder q(z|x,y): an MLP on [x, one-hot y] giving a diagonal Gaussian (reparameterised);
- decoder p(x|y,z): an MLP giving Bernoulli logits of the pixels (grey levels in [0, 1] are
  soft targets), with p(z) = N(0, I) and p(y) uniform.

Loss per step: mean over the labelled batch of -ELBO(x, y), plus the mean over the unlabelled
batch of sum_y q(y|x) (-ELBO(x, y)) - H(q(y|x)) (every class decoded), plus alpha times the
labelled cross-entropy of q(y|x). The paper's alpha = 0.1 N weighs a *sum* over the data; with
batch means the same ratio of the classification term to the unlabelled term is
0.1 * N_unlabelled / N_labelled = 0.1 * 55000 / 100 = 55, the default (set ``alpha`` otherwise).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gencls.losses import m2_negative_elbo, m2_unlabelled_loss
from gencls.methods.base import Method, register_method
from gencls.nets import EMA, ClassConditionalDecoder, ClassConditionalEncoder, MLPClassifier, one_hot


@register_method
class VAEM2(Method):
    name = "vae-m2"
    description = "semi-supervised VAE M2: q(y|x), q(z|x,y), p(x|y,z) (Kingma et al. 2014)"
    can_generate = True
    can_condition = True
    latent_distribution = "normal(0,1)"
    ood_score_name = "ELBO of log p(x) (z at its mean, y summed out with q(y|x))"
    published_results = {"mnist/100": {"error": "11.97 ± 1.71 (M2)", "source": "Kingma et al. 2014"}}
    default_config = {"lr": 0.001, "classifier_lr": 0.003, "beta1": 0.9, "alpha": 55.0, "nz": 50,
                      "hidden": [500], "ema_decay": 0.999}

    def __init__(self, config, image_shape, num_classes):
        super().__init__(config, image_shape, num_classes)
        c = self.config
        d = math.prod(self.image_shape)
        hidden = tuple(int(h) for h in c["hidden"])
        self.nz = int(c["nz"])
        self.clf = MLPClassifier(d, num_classes)
        self.enc = ClassConditionalEncoder(d, num_classes, hidden, self.nz)
        self.dec = ClassConditionalDecoder(self.image_shape, num_classes, self.nz, hidden[::-1])
        self.ema = EMA(self.clf, c["ema_decay"])
        betas = (c["beta1"], 0.999)
        self.opt = torch.optim.Adam([
            {"params": [*self.enc.parameters(), *self.dec.parameters()], "lr": c["lr"]},
            {"params": [p for p in self.clf.parameters() if p.requires_grad], "lr": c["classifier_lr"]}],
            betas=betas)

    def optimizers(self):
        return {"all": self.opt}

    def setup(self, x):
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
        loss_lab = neg_elbo_lab.mean()
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
