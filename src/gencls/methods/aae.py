"""Semi-supervised adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow & Frey 2015,
"Adversarial Autoencoders", section 5).

The encoder maps x to a categorical y (softmax over K logits) and a continuous style z; the
decoder rebuilds x from (y, z). Each mini-batch takes the paper's three phases in turn:

1. reconstruction: encoder and decoder minimise the reconstruction error of unlabelled images
   (Bernoulli cross-entropy of the pixels; the encoder sees them with Gaussian input noise);
2. regularisation: two discriminators learn to tell one-hot samples of Cat(K) from the encoder's
   y, and N(0, I) samples from its z; then the encoder is updated to fool both;
3. semi-supervised classification: the encoder's y logits minimise the cross-entropy on the
   labelled batch.

As in the paper, the encoder, the decoder and both discriminators have two hidden layers of 1000
ReLU units. Each phase has its own Adam optimiser (the paper used SGD with momentum, a learning
rate per phase, and far longer training). The regularisation phase's step (``lr_reg``, 5e-4 for
both the discriminators and the encoder) must keep up with the reconstruction's (1e-3): at 2e-4
the encoder's z drifted from N(0, I) after ~15 epochs (batch std 2.4, the Gaussian discriminator
winning, its generator loss 3 -> 20) and the validation error rose from 5.5 % to 7.4 % by epoch
30; at 5e-4 it keeps falling (README). The Gaussian noise on
the encoder's input (sigma 0.3, in every phase) is ours: without it the validation error after one
epoch was 19.6 % instead of 12.8 % (README). It classifies with y (an EMA of the encoder's weights)
and generates from (one-hot y, z ~ N(0, I)).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gencls.losses import adversarial_discriminator_loss, adversarial_generator_loss, bernoulli_nll
from gencls.methods.base import Method, register_method
from gencls.nets import EMA, ClassConditionalDecoder, GaussianNoise, make_mlp, one_hot


class _Encoder(torch.nn.Module):
    def __init__(self, in_features, num_classes, nz, hidden, input_noise):
        super().__init__()
        self.num_classes = num_classes
        self.noise = GaussianNoise(input_noise)
        self.net = make_mlp(in_features, hidden, num_classes + nz, "relu")

    def forward(self, x):
        """(y logits, z)."""
        out = self.net(self.noise(x.flatten(1)))
        return out[:, : self.num_classes], out[:, self.num_classes:]


@register_method
class AdversarialAutoencoder(Method):
    name = "aae"
    description = "semi-supervised adversarial autoencoder: categorical y + Gaussian z (Makhzani et al. 2015)"
    can_generate = True
    can_condition = True
    latent_distribution = "normal(0,1)"
    ood_score_name = "negative reconstruction error (Bernoulli cross-entropy)"
    published_results = {"mnist/100": {"error": "1.90 ± 0.10", "source": "Makhzani et al. 2015, Table 2"},
                         "mnist/1000": {"error": "1.60 ± 0.08", "source": "Makhzani et al. 2015, Table 2"}}
    default_config = {"lr_recon": 0.001, "lr_reg": 0.0005, "lr_sup": 0.001, "beta1_reg": 0.5, "nz": 10,
                      "hidden": [1000, 1000], "disc_hidden": [1000, 1000], "input_noise": 0.3, "ema_decay": 0.999}

    def __init__(self, config, image_shape, num_classes):
        super().__init__(config, image_shape, num_classes)
        c = self.config
        d = math.prod(self.image_shape)
        hidden = tuple(int(h) for h in c["hidden"])
        disc_hidden = tuple(int(h) for h in c["disc_hidden"])
        self.nz = int(c["nz"])
        self.enc = _Encoder(d, num_classes, self.nz, hidden, float(c["input_noise"]))
        self.dec = ClassConditionalDecoder(self.image_shape, num_classes, self.nz, hidden[::-1], "relu")
        self.d_cat = make_mlp(num_classes, disc_hidden, 1, "relu")
        self.d_gauss = make_mlp(self.nz, disc_hidden, 1, "relu")
        self.ema = EMA(self.enc, c["ema_decay"])
        reg_betas = (c["beta1_reg"], 0.999)
        self.opt_recon = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()], lr=c["lr_recon"],
                                          fused=True)
        self.opt_disc = torch.optim.Adam([*self.d_cat.parameters(), *self.d_gauss.parameters()], lr=c["lr_reg"],
                                         betas=reg_betas, fused=True)
        self.opt_gen = torch.optim.Adam(self.enc.parameters(), lr=c["lr_reg"], betas=reg_betas, fused=True)
        self.opt_sup = torch.optim.Adam(self.enc.parameters(), lr=c["lr_sup"], fused=True)

    def optimizers(self):
        return {"recon": self.opt_recon, "disc": self.opt_disc, "gen": self.opt_gen, "sup": self.opt_sup}

    def _step(self, opt, name, loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_step(opt, {name: loss})

    def train_step(self, x_lab, y_lab, x_unl):
        k, n = self.num_classes, x_unl.shape[0]
        x_u = x_unl.flatten(1)
        enc_params = list(self.enc.parameters())

        # 1. reconstruction
        y_logits, z = self.enc(x_u)
        loss_recon = bernoulli_nll(self.dec(y_logits.softmax(1), z), x_u).mean()
        self._step(self.opt_recon, "loss_recon", loss_recon)

        # 2. regularisation: the discriminators, then the encoder as their generator
        with torch.no_grad():
            y_logits, z = self.enc(x_u)
        y_prior = one_hot(torch.randint(0, k, (n,), device=x_u.device), k)
        z_prior = torch.randn(n, self.nz, device=x_u.device)
        loss_disc = (adversarial_discriminator_loss(self.d_cat(y_prior), self.d_cat(y_logits.softmax(1)))
                     + adversarial_discriminator_loss(self.d_gauss(z_prior), self.d_gauss(z)))
        self._step(self.opt_disc, "loss_disc", loss_disc)
        y_logits, z = self.enc(x_u)
        gen_cat = adversarial_generator_loss(self.d_cat(y_logits.softmax(1)))
        gen_gauss = adversarial_generator_loss(self.d_gauss(z))
        loss_gen = gen_cat + gen_gauss
        self.grads_into(loss_gen, enc_params)  # the discriminators' weights get none
        self.optimizer_step(self.opt_gen, {"loss_gen": loss_gen})

        # 3. semi-supervised classification
        y_logits_l, _ = self.enc(x_lab)
        loss_sup = F.cross_entropy(y_logits_l, y_lab)
        self._step(self.opt_sup, "loss_sup", loss_sup)
        self.ema.update(self.enc)
        # each prior's part of loss_gen, and the spread of z (1 under the prior): a drift of z from
        # N(0, I) shows as z_std leaving 1 and gen_gauss climbing, before the error rises
        return {"loss_recon": loss_recon.detach(), "loss_disc": loss_disc.detach(), "loss_gen": loss_gen.detach(),
                "loss_sup": loss_sup.detach(), "train_err": (y_logits_l.detach().argmax(1) != y_lab).float().mean(),
                "gen_cat": gen_cat.detach(), "gen_gauss": gen_gauss.detach(), "z_std": z.detach().std(0).mean()}

    def classify(self, x):
        with self.evaluating():
            return self.ema.shadow(x)[0]

    def ood_score(self, x):
        """Negative reconstruction error (Bernoulli cross-entropy summed over pixels): higher = more alike."""
        with self.evaluating():
            x = x.flatten(1)
            y_logits, z = self.ema.shadow(x)
            return -bernoulli_nll(self.dec(y_logits.softmax(1), z), x)

    def sample_latent(self, n, generator=None):
        return self.dec.sample_z(n, self.device, generator)

    def decode_latent(self, z, labels=None):
        with self.evaluating():
            return self.dec.generate(z.to(self.device), labels)
