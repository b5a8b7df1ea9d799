"""Semi-supervised GAN with feature matching (Salimans et al. 2016, "Improved Techniques for
Training GANs"), as in the authors' MNIST code.

The discriminator is the classifier: K logits, the fake class an implicit logit fixed at 0.
Losses: labelled cross-entropy, the unlabelled real/fake loss on log-sum-exp of the logits,
and feature matching on the last hidden layer for the generator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gencls.losses import feature_matching_loss, ssl_gan_real_probability, ssl_gan_unlabelled_loss
from gencls.methods.base import CannotGenerate, Method, register_method
from gencls.nets import EMA, make_classifier, make_generator, resolve_arch


@register_method
class ImprovedGAN(Method):
    name = "improved-gan"
    description = "K-logit semi-supervised GAN with feature matching (Salimans et al. 2016)"
    can_generate = True
    unlabelled_batches = 2  # one for the discriminator, an independent one for feature matching
    published_results = {"mnist/100": {"error": "0.93 ± 0.065", "source": "Salimans et al. 2016"}}
    ood_score_name = "discriminator D(x) = Z/(Z+1)"
    latent_distribution = "uniform(0,1)"
    default_config = {"lr": 0.003, "beta1": 0.5, "adam_eps": 1e-4, "unlabelled_weight": 1.0, "ema_decay": 0.999,
                      "hidden": [1000, 500, 250, 250, 250], "nz": 100,
                      # networks: "auto" picks the MNIST MLP for one-channel images up to 28x28 and the CIFAR-10
                      # conv nets otherwise (gencls.nets.cifar); conv_lr is the CIFAR code's learning rate
                      "arch": "auto", "conv_width": 96, "g_width": 128, "conv_lr": 0.0003}

    def __init__(self, config, image_shape, num_classes):
        super().__init__(config, image_shape, num_classes)
        c = self.config
        self.arch = resolve_arch(c["arch"], self.image_shape)
        self.disc = make_classifier(self.arch, self.image_shape, num_classes, c)
        self.gen = make_generator(self.arch, self.image_shape, c)
        self.ema = EMA(self.disc, c["ema_decay"])
        betas = (c["beta1"], 0.999)
        lr = c["lr"] if self.arch == "mlp" else c["conv_lr"]
        self.opt_d = torch.optim.Adam([p for p in self.disc.parameters() if p.requires_grad], lr=lr, betas=betas, eps=c["adam_eps"])
        self.opt_g = torch.optim.Adam([p for p in self.gen.parameters() if p.requires_grad], lr=lr, betas=betas, eps=c["adam_eps"])

    def optimizers(self):
        return {"disc": self.opt_d, "gen": self.opt_g}

    def setup(self, x):
        self.disc.data_init(x)
        if hasattr(self.gen, "data_init"):  # the conv generator's weight-normalised output layer
            self.gen.data_init(self.gen.sample_z(len(x), x.device))
        self.ema.reset(self.disc)

    def train_step(self, x_lab, y_lab, x_unl):
        b_lab = x_lab.shape[0]
        x_unl_d, x_unl_g = x_unl.chunk(2)
        n_fake = x_unl_d.shape[0]

        # discriminator/classifier: one pass over labelled + unlabelled + generated images
        with torch.no_grad():
            fake = self.gen(self.gen.sample_z(n_fake, x_unl.device))
        logits, _ = self.disc(torch.cat([x_lab.flatten(1), x_unl_d.flatten(1), fake.flatten(1)]))
        l_lab, l_unl, l_fake = logits.split([b_lab, x_unl_d.shape[0], n_fake])
        loss_lab = F.cross_entropy(l_lab, y_lab)
        loss_unl = ssl_gan_unlabelled_loss(l_unl, l_fake)
        self.opt_d.zero_grad(set_to_none=True)
        (loss_lab + self.config["unlabelled_weight"] * loss_unl).backward()
        self.optimizer_step(self.opt_d, {"loss_lab": loss_lab, "loss_unl": loss_unl})
        self.ema.update(self.disc)

        # generator: feature matching against an independent unlabelled batch
        fake = self.gen(self.gen.sample_z(x_unl_g.shape[0], x_unl.device))
        with torch.no_grad():
            _, f_real = self.disc(x_unl_g)
        _, f_fake = self.disc(fake)
        loss_gen = feature_matching_loss(f_real, f_fake)
        gen_params = list(self.gen.parameters())
        grads = torch.autograd.grad(loss_gen, gen_params)  # no gradients for the discriminator's weights
        for p, g in zip(gen_params, grads):
            p.grad = g
        self.optimizer_step(self.opt_g, {"loss_gen": loss_gen})

        train_err = (l_lab.detach().argmax(1) != y_lab).float().mean()
        return {"loss_lab": loss_lab.detach(), "loss_unl": loss_unl.detach(), "loss_gen": loss_gen.detach(),
                "train_err": train_err}

    def classify(self, x):
        with self.evaluating():
            return self.ema.shadow(x)[0]

    def ood_score(self, x):
        """D(x) = Z/(Z+1) of the (EMA) discriminator: the probability that x is real training-like data."""
        with self.evaluating():
            return ssl_gan_real_probability(self.ema.shadow(x)[0])

    def classify_and_score(self, x):
        with self.evaluating():
            logits = self.ema.shadow(x)[0]
            return logits, ssl_gan_real_probability(logits)

    def sample_latent(self, n, generator=None):
        return self.gen.sample_z(n, self.device, generator)

    def decode_latent(self, z, labels=None):
        if labels is not None:
            raise CannotGenerate("improved-gan's generator is unconditional: it cannot generate a chosen class")
        with self.evaluating():
            return self.gen(z)

    def generate(self, n, labels=None, generator=None):
        if labels is not None:
            raise CannotGenerate("improved-gan's generator is unconditional: it cannot generate a chosen class")
        return self.decode_latent(self.sample_latent(n, generator))
