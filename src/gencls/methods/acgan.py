"""AC-GAN (Odena, Olah & Shlens 2017, "Conditional Image Synthesis with Auxiliary Classifier GANs"),
semi-supervised as well as supervised.

A class-conditional generator G(z, y) and a discriminator with two heads on shared convolutional
features: a real/fake logit and K class logits (DCGAN-style networks from ``gencls.nets.conv``).

- discriminator: binary cross-entropy on logits, unlabelled real images -> real, generated -> fake;
  cross-entropy on logits for the labelled real images and for the generated images (whose class
  is the one G was asked for, weighted by ``fake_class_weight``);
- generator (non-saturating): its images -> real, plus the cross-entropy of their asked-for class.

With ``--labels 100`` the class head learns from 100 labelled images and from G's images, and the
shared features also from every unlabelled image through the real/fake loss; with
``--labels all`` it is the fully supervised AC-GAN. It classifies with an exponential moving
average of the discriminator's weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gencls.losses import real_fake_loss
from gencls.methods.base import Method, register_method
from gencls.nets import EMA, ConvDiscriminator, ConvGenerator


@register_method
class ACGAN(Method):
    name = "acgan"
    description = "AC-GAN: class-conditional generator, discriminator with real/fake and class heads"
    can_generate = True
    can_condition = True
    unlabelled_batches = 1
    latent_distribution = "normal(0,1)"
    ood_score_name = "discriminator real/fake probability sigmoid(l_rf)"
    default_config = {"lr_d": 0.0002, "lr_g": 0.0002, "beta1": 0.5, "nz": 100, "g_width": 32, "d_width": 32,
                      "features": 256, "dropout": 0.3, "spectral_norm": True, "class_weight": 1.0,
                      "fake_class_weight": 1.0, "ema_decay": 0.999}

    def __init__(self, config, image_shape, num_classes):
        super().__init__(config, image_shape, num_classes)
        c = self.config
        self.gen = ConvGenerator(self.image_shape, nz=int(c["nz"]), num_classes=num_classes, width=int(c["g_width"]))
        self.disc = ConvDiscriminator(self.image_shape, num_classes, width=int(c["d_width"]),
                                      features=int(c["features"]), dropout=float(c["dropout"]),
                                      spectral=bool(c["spectral_norm"]))
        self.ema = EMA(self.disc, c["ema_decay"])
        betas = (c["beta1"], 0.999)
        # fused Adam: one pass over weights and moments, guarded on the device without a host sync
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=c["lr_d"], betas=betas, fused=True)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=c["lr_g"], betas=betas, fused=True)

    def optimizers(self):
        return {"disc": self.opt_d, "gen": self.opt_g}

    def setup(self, x):
        """Start the generator's output at the data's mean intensity (its output bias = logit of the mean
        pixel) rather than at 0.5 grey: from grey, the first steps make every output weight negative to
        darken the background, and the generator then stays stuck making dim images (seen on MNIST)."""
        self.gen.init_output_bias(x.mean())

    def train_step(self, x_lab, y_lab, x_unl):
        c = self.config
        n_lab, n_unl = x_lab.shape[0], x_unl.shape[0]
        y_fake = torch.randint(0, self.num_classes, (n_unl,), device=x_unl.device)
        fake = self.gen(self.gen.sample_z(n_unl, x_unl.device), y_fake)

        # discriminator: one pass over labelled, unlabelled and (detached) generated images
        rf, cls = self.disc(torch.cat([x_lab, x_unl, fake.detach()]))
        _, rf_unl, rf_fake = rf.split([n_lab, n_unl, n_unl])
        cls_lab, _, cls_fake = cls.split([n_lab, n_unl, n_unl])
        loss_rf = real_fake_loss(rf_unl, real=True) + real_fake_loss(rf_fake, real=False)
        loss_lab = F.cross_entropy(cls_lab, y_lab)
        loss_cls_fake = F.cross_entropy(cls_fake, y_fake)
        loss_d = loss_rf + c["class_weight"] * (loss_lab + c["fake_class_weight"] * loss_cls_fake)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizer_step(self.opt_d, {"loss_rf": loss_rf, "loss_lab": loss_lab, "loss_cls_fake": loss_cls_fake})
        self.ema.update(self.disc)

        # generator: look real and be classified as the class asked for
        rf_g, cls_g = self.disc(fake)
        loss_g_cls = F.cross_entropy(cls_g, y_fake)
        loss_gen = real_fake_loss(rf_g, real=True) + c["class_weight"] * loss_g_cls
        self.grads_into(loss_gen, list(self.gen.parameters()))  # no gradients into the discriminator's weights
        self.optimizer_step(self.opt_g, {"loss_gen": loss_gen})

        return {"loss_lab": loss_lab.detach(), "loss_rf": loss_rf.detach(), "loss_cls_fake": loss_cls_fake.detach(),
                "loss_gen": loss_gen.detach(),
                "train_err": (cls_lab.detach().argmax(1) != y_lab).float().mean(),
                "fake_acc": (cls_g.detach().argmax(1) == y_fake).float().mean()}

    def classify(self, x):
        with self.evaluating():
            return self.ema.shadow(x)[1]

    def ood_score(self, x):
        """The (EMA) discriminator's real/fake probability sigmoid(l_rf): how real-training-like x looks."""
        with self.evaluating():
            return torch.sigmoid(self.ema.shadow(x)[0])

    def classify_and_score(self, x):
        with self.evaluating():
            rf, cls = self.ema.shadow(x)
            return cls, torch.sigmoid(rf)

    def sample_latent(self, n, generator=None):
        return self.gen.sample_z(n, self.device, generator)

    def decode_latent(self, z, labels=None):
        z = z.to(self.device)
        with self.evaluating():
            if labels is None:  # no class asked for: every class in turn (0, 1, ..., K-1, 0, ...)
                labels = torch.arange(z.shape[0], device=z.device) % self.num_classes
            return self.gen(z, labels.to(z.device).long())
