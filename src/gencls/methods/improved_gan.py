"""Semi-supervised GAN with feature matching (Salimans et al. 2016, "Improved Techniques for
Training GANs"), as in the authors' MNIST code.

The discriminator is the classifier: K logits, the fake class an implicit logit fixed at 0.
Losses: labelled cross-entropy, the unlabelled real/fake loss on log-sum-exp of the logits,
and feature matching on the last hidden layer for the generator.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from gencls.errors import GenclsError
from gencls.losses import feature_matching_loss, ssl_gan_real_probability, ssl_gan_unlabelled_loss
from gencls.methods.base import CannotGenerate, Method, register_method
from gencls.methods.stacking import StackedModules, stacked_adam
from gencls.nets import EMA, NoiseBank, make_classifier, make_generator, resolve_arch, scale_outputs


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
                      "arch": "auto", "conv_width": 96, "g_width": 128, "conv_lr": 0.0003,
                      # the generator's feature matching: "l2" (mean squared difference of the feature means;
                      # the paper, and the reference MNIST code) or "l1" (mean absolute; the reference CIFAR code)
                      "feature_matching": "l2",
                      # the optimised step (weight norm as an output scale, computed once per pass, preallocated
                      # Adam with a sync-free divergence guard); false: the plain reference step
                      "fused": True}

    def __init__(self, config, image_shape, num_classes):
        super().__init__(config, image_shape, num_classes)
        c = self.config
        self.arch = resolve_arch(c["arch"], self.image_shape)
        if c["feature_matching"] not in ("l1", "l2"):
            raise GenclsError(f"method improved-gan: feature_matching={c['feature_matching']!r}: l1 or l2")
        self.disc = make_classifier(self.arch, self.image_shape, num_classes, c)
        self.gen = make_generator(self.arch, self.image_shape, c)
        # the optimised step is written for the MLP networks; the conv networks take the plain step
        self.fused_step = bool(c["fused"]) and self.arch == "mlp"
        if self.fused_step:  # weight normalisation as a scale of the outputs: W = v g/||v|| is never formed
            scale_outputs(self)
            self.gen.fast_softplus = True
        self.ema = EMA(self.disc, c["ema_decay"])
        betas = (c["beta1"], 0.999)
        lr = c["lr"] if self.arch == "mlp" else c["conv_lr"]
        fused = True if c["fused"] else None  # fused Adam: one pass over the weights, skips on device
        self.opt_d = torch.optim.Adam([p for p in self.disc.parameters() if p.requires_grad], lr=lr, betas=betas,
                                      eps=c["adam_eps"], fused=fused)
        self.opt_g = torch.optim.Adam([p for p in self.gen.parameters() if p.requires_grad], lr=lr, betas=betas,
                                      eps=c["adam_eps"], fused=fused)
        self._noise = NoiseBank()

    def optimizers(self):
        return {"disc": self.opt_d, "gen": self.opt_g}

    def setup(self, x):
        self.disc.data_init(x)
        if hasattr(self.gen, "data_init"):  # the conv generator's weight-normalised output layer
            self.gen.data_init(self.gen.sample_z(len(x), x.device))
        self.ema.reset(self.disc)

    def train_step(self, x_lab, y_lab, x_unl):
        if self.fused_step:
            return self._fused_step(x_lab, y_lab, x_unl)
        return self._plain_step(x_lab, y_lab, x_unl)

    def _plain_step(self, x_lab, y_lab, x_unl):
        """The reference step, written for clarity (``--set fused=false``)."""
        x_unl_d, x_unl_g = x_unl.chunk(2)
        n_fake = x_unl_d.shape[0]

        # discriminator/classifier: one pass over labelled + unlabelled + generated images
        with torch.no_grad():
            fake = self.gen(self.gen.sample_z(n_fake, x_unl.device))
        logits, _ = self.disc(torch.cat([x_lab.flatten(1), x_unl_d.flatten(1), fake.flatten(1)]))
        l_lab, loss_lab, loss_unl = self._discriminator_update(logits, y_lab, n_fake)

        # generator: feature matching against an independent unlabelled batch
        fake = self.gen(self.gen.sample_z(x_unl_g.shape[0], x_unl.device))
        with torch.no_grad():
            _, f_real = self.disc(x_unl_g)
        _, f_fake = self.disc(fake)
        loss_gen = self._generator_update(f_real, f_fake)
        return self._losses(l_lab, y_lab, loss_lab, loss_unl, loss_gen)

    def _discriminator_update(self, logits, y_lab, n_fake):
        """Losses on the logits of [labelled, unlabelled, generated] (fp32 even under autocast: the
        log-sum-exp), one guarded optimizer step, the EMA update. Returns (labelled logits, losses)."""
        l_lab, l_unl, l_fake = logits.float().split([len(y_lab), n_fake, n_fake])
        loss_lab = F.cross_entropy(l_lab, y_lab)
        loss_unl = ssl_gan_unlabelled_loss(l_unl, l_fake)
        self.opt_d.zero_grad(set_to_none=True)
        (loss_lab + self.config["unlabelled_weight"] * loss_unl).backward()
        self.optimizer_step(self.opt_d, {"loss_lab": loss_lab, "loss_unl": loss_unl})
        self.ema.update(self.disc)
        return l_lab, loss_lab, loss_unl

    def _generator_update(self, f_real, f_fake):
        """Feature matching, gradients for the generator only, one guarded optimizer step."""
        loss_gen = feature_matching_loss(f_real.float(), f_fake.float(), self.config["feature_matching"])
        self.grads_into(loss_gen, list(self.gen.parameters()))  # no gradients for the discriminator's weights
        self.optimizer_step(self.opt_g, {"loss_gen": loss_gen})
        return loss_gen

    @staticmethod
    def _losses(l_lab, y_lab, loss_lab, loss_unl, loss_gen):
        train_err = (l_lab.detach().argmax(1) != y_lab).float().mean()
        return {"loss_lab": loss_lab.detach(), "loss_unl": loss_unl.detach(), "loss_gen": loss_gen.detach(),
                "train_err": train_err}

    def _fused_step(self, x_lab, y_lab, x_unl):
        """The same computation as ``_plain_step`` (the same random draws in the same order with
        ``self._noise.parallel = False``; by default on a multi-threaded CPU the Gaussian noise is
        drawn on two threads, same distribution, other numbers), faster:
        weight normalisation scales the layer outputs (x v^T) g/||v|| instead of forming
        W = v g/||v|| (fewer passes over the weights, forward and backward), the discriminator's
        scales are computed once for both generator-step passes, noise goes into preallocated
        buffers, ReLU runs in place, the generator's softplus avoids the CPU's scalar log1p, and
        the fused Adam steps are guarded on the device without a host sync."""
        nz, noise = self.gen.nz, self._noise
        x_unl_d, x_unl_g = x_unl.flatten(1).chunk(2)
        n_fake, n_gen = x_unl_d.shape[0], x_unl_g.shape[0]
        dims = self.disc.noise_dims()  # the step's Gaussian noise, drawn at once (on two threads on a CPU)
        noise.prefill([(len(y_lab) + 2 * n_fake, d) for d in dims] + [(n_gen, d) for d in dims] * 2, x_unl)

        with torch.no_grad():
            fake = self.gen(noise.uniform((n_fake, nz), x_unl.device))
        logits, _ = self.disc(torch.cat([x_lab.flatten(1), x_unl_d, fake.flatten(1)]), None, noise)
        l_lab, loss_lab, loss_unl = self._discriminator_update(logits, y_lab, n_fake)

        fake = self.gen(noise.uniform((n_gen, nz), x_unl.device))
        with torch.no_grad():  # the discriminator is fixed in the generator step: its weights once
            weights = self.disc.weights()
            _, f_real = self.disc(x_unl_g, weights, noise)
        _, f_fake = self.disc(fake, weights, noise)
        loss_gen = self._generator_update(f_real, f_fake)
        return self._losses(l_lab, y_lab, loss_lab, loss_unl, loss_gen)

    @classmethod
    def can_stack(cls, methods):
        return all(m.arch == "mlp" for m in methods)  # the conv networks step one seed at a time

    @classmethod
    def stack(cls, methods, guard):
        """All seeds in one batched step (the MLP networks)."""
        return _StackedImprovedGAN(methods, guard) if cls.can_stack(methods) else None

    def flops_per_step(self, batch_size: int) -> dict[str, float]:
        """Floating-point operations of one training step with ``batch_size`` labelled images and
        two unlabelled batches of ``batch_size``, from the layer shapes (a multiply-add is 2).

        Counted: every matrix product -- discriminator forward on labelled+unlabelled+generated
        and its backward (weight gradients everywhere, input gradients above the first layer);
        the generator forward for the fakes; in the generator step the generator forward and
        backward, the discriminator forward on real (no gradient) and on fake plus its backward to
        the input (no weight gradients) -- and the weight normalisation (about 3 operations per
        weight forward, 5 backward: twice per step for the discriminator, with one backward, and
        twice for the generator's output layer). Element-wise work (noise, ReLU, batch norm,
        softplus, losses, Adam, EMA) is not counted: it is memory-bound, a few percent of the FLOPs.
        """
        if self.arch != "mlp":
            raise NotImplementedError("flops_per_step counts the MLP networks of the MNIST model only")
        d = [math.prod(self.image_shape), *self.config["hidden"], self.num_classes]
        g = [self.gen.nz, self.gen.fc1.out_features, self.gen.fc2.out_features, math.prod(self.image_shape)]

        def mm(n, dims):  # 2 n a b summed over the layers
            return sum(2.0 * n * a * b for a, b in zip(dims[:-1], dims[1:]))

        n, b = 3 * batch_size, batch_size
        disc = mm(n, d) + mm(n, d) + mm(n, d[1:])  # forward, weight grads, input grads (not of the images)
        fakes = mm(b, g)
        gen = (mm(b, g) + mm(b, g) + mm(b, g[1:])  # generator forward, weight grads, input grads
               + mm(b, d) + mm(b, d) + mm(b, d))  # discriminator on real, on fake, backward to the fake input
        wn_disc = sum(a * c for a, c in zip(d[:-1], d[1:]))
        wn = 2 * 3 * wn_disc + 5 * wn_disc + 2 * 3 * g[-2] * g[-1] + 5 * g[-2] * g[-1]
        return {"discriminator_step": disc, "fakes": fakes, "generator_step": gen, "weight_norm": float(wn),
                "total": disc + fakes + gen + wn}

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
            return self.gen(z.to(self.device))

    def generate(self, n, labels=None, generator=None):
        if labels is not None:
            raise CannotGenerate("improved-gan's generator is unconditional: it cannot generate a chosen class")
        return self.decode_latent(self.sample_latent(n, generator))


class _StackedImprovedGAN:
    """S seeds of ``ImprovedGAN`` (MLP networks) trained as one batched model: the same losses
    and updates as S separate plain steps, each layer one batched product over the seeds (the
    random draws are independent per seed but not those of separate runs). The per-seed methods'
    weights, Adam moments and EMA weights are views of the stacked tensors."""

    def __init__(self, methods: list[ImprovedGAN], guard):
        self.methods, self.guard = methods, guard
        self.seed_names = [f"seed index {s}" for s in range(len(methods))]  # the trainer names them "seed S"
        for m in methods:
            m._stacked = True
        self.config = methods[0].config
        self.disc = StackedModules([m.disc for m in methods])
        self.gen = StackedModules([m.gen for m in methods])
        self.shadow = StackedModules([m.ema.shadow for m in methods])
        self.opt_d = stacked_adam(self.disc, [m.opt_d for m in methods])
        self.opt_g = stacked_adam(self.gen, [m.opt_g for m in methods])
        self.nz = methods[0].gen.nz
        self.ema_decay = methods[0].ema.decay
        self.ema_updates = methods[0].ema.updates
        self._loss_lab = torch.vmap(F.cross_entropy)
        self._loss_unl = torch.vmap(ssl_gan_unlabelled_loss)
        self._loss_gen = torch.vmap(functools.partial(feature_matching_loss, norm=self.config["feature_matching"]))

    def _z(self, n, device):
        return torch.rand(len(self.methods), n, self.nz, device=device)

    def train_step(self, x_lab, y_lab, x_unl):
        """Inputs with a leading seed dimension: (S, B, ...) labelled, (S, 2B, ...) unlabelled."""
        x_unl_d, x_unl_g = x_unl.flatten(2).chunk(2, dim=1)
        n_fake, n_gen, n_lab = x_unl_d.shape[1], x_unl_g.shape[1], y_lab.shape[1]

        with torch.no_grad():
            fake = self.gen(self._z(n_fake, x_unl.device))
        logits, _ = self.disc(torch.cat([x_lab.flatten(2), x_unl_d, fake.flatten(2)], dim=1))
        l_lab, l_unl, l_fake = logits.float().split([n_lab, n_fake, n_fake], dim=1)
        loss_lab, loss_unl = self._loss_lab(l_lab, y_lab), self._loss_unl(l_unl, l_fake)
        self.opt_d.zero_grad(set_to_none=True)
        (loss_lab + self.config["unlabelled_weight"] * loss_unl).sum().backward()  # seeds' gradients are disjoint
        self.guard.step(self.opt_d, {"loss_lab": loss_lab, "loss_unl": loss_unl}, self.seed_names)
        self._update_ema()

        fake = self.gen(self._z(n_gen, x_unl.device))
        with torch.no_grad():
            _, f_real = self.disc(x_unl_g)
        _, f_fake = self.disc(fake.flatten(2))
        loss_gen = self._loss_gen(f_real.float(), f_fake.float())
        Method.grads_into(loss_gen.sum(), self.gen.trainable())  # vmap can return a transposed layout
        self.guard.step(self.opt_g, {"loss_gen": loss_gen}, self.seed_names)
        train_err = (l_lab.detach().argmax(2) != y_lab).float().mean(1)
        return {"loss_lab": loss_lab.detach(), "loss_unl": loss_unl.detach(), "loss_gen": loss_gen.detach(),
                "train_err": train_err}

    @torch.no_grad()
    def _update_ema(self):
        """``EMA.update`` for all seeds at once (the same warm-up of the decay)."""
        self.ema_updates += 1
        d = min(self.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        names = [n for n in self.shadow.params]
        torch._foreach_lerp_([self.shadow.params[n] for n in names], [self.disc.params[n].detach() for n in names],
                             1.0 - d)
        for n, b in self.shadow.buffers.items():
            b.copy_(self.disc.buffers[n])
        for m in self.methods:
            m.ema.updates = self.ema_updates
