"""Entropy minimisation (Grandvalet & Bengio 2005, "Semi-supervised Learning by Entropy
Minimization"), as a gencls method defined outside the package.

The classifier is the one ``supervised`` trains (the weight-normalised MLP of Improved-GAN with
Gaussian noise, or the CIFAR-10 conv net: ``arch``), with the same Adam and EMA. The loss adds to
the labelled cross-entropy the mean entropy of the predicted class distribution on unlabelled
images, H(p) = -sum_k p_k log p_k: decision boundaries move away from where unlabelled images
lie. Its weight rises linearly from 0 over ``rampup_steps`` steps, so the first, poor predictions
are not made confident.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gencls.methods import Method, register_method
from gencls.nets import EMA, make_classifier, resolve_arch, scale_outputs


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy of softmax(logits), from the logits (log_softmax: no log of a rounded 0)."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1).mean()


@register_method
class EntropyMin(Method):
    name = "entropy-min"
    description = "supervised classifier + entropy minimisation on unlabelled images (Grandvalet & Bengio 2005)"
    unlabelled_batches = 1  # x_unl: one batch of unlabelled images per step
    default_config = {"entropy_weight": 1.0, "rampup_steps": 100,
                      # the rest as in supervised (and improved-gan): the same network and optimiser
                      "lr": 0.003, "beta1": 0.5, "adam_eps": 1e-4, "ema_decay": 0.999,
                      "hidden": [1000, 500, 250, 250, 250], "input_noise": 0.3, "hidden_noise": 0.5,
                      "arch": "auto", "conv_width": 96, "conv_lr": 0.0003}

    def __init__(self, config, image_shape, num_classes):
        super().__init__(config, image_shape, num_classes)  # checks and types the settings into self.config
        c = self.config
        self.arch = resolve_arch(c["arch"], self.image_shape)
        self.net = scale_outputs(make_classifier(self.arch, self.image_shape, num_classes, c))
        self.ema = EMA(self.net, c["ema_decay"])  # its update count is saved by Method.extra_state
        lr = c["lr"] if self.arch == "mlp" else c["conv_lr"]
        self.opt = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=lr,
                                    betas=(c["beta1"], 0.999), eps=c["adam_eps"], fused=True)
        # the step count for the ramp-up: a buffer, so it is saved with the weights (a resumed run
        # continues the ramp) and counted on the device (no host sync per step)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def optimizers(self):
        return {"net": self.opt}  # saved and restored with the run; --lr-decay scales them

    def setup(self, x):
        self.net.data_init(x)  # weight normalisation's data-dependent initialisation
        self.ema.reset(self.net)

    def train_step(self, x_lab, y_lab, x_unl):
        n = len(y_lab)
        logits, _ = self.net(torch.cat([x_lab, x_unl]))  # one pass over labelled + unlabelled
        l_lab, l_unl = logits.float().split([n, len(x_unl)])  # losses in fp32 even under autocast
        loss_lab = F.cross_entropy(l_lab, y_lab)
        loss_ent = entropy(l_unl)
        self.steps.add_(1)
        weight = self.config["entropy_weight"] * (self.steps / max(1, self.config["rampup_steps"])).clamp(max=1.0)
        self.opt.zero_grad(set_to_none=True)
        (loss_lab + weight * loss_ent).backward()
        self.optimizer_step(self.opt, {"loss_lab": loss_lab, "loss_ent": loss_ent})  # NaN / explosion guard
        self.ema.update(self.net)
        return {"loss_lab": loss_lab.detach(), "loss_ent": loss_ent.detach(),
                "train_err": (l_lab.detach().argmax(1) != y_lab).float().mean()}

    def classify(self, x):
        with self.evaluating():  # eval mode (no noise), no gradients
            return self.ema.shadow(x)[0]
