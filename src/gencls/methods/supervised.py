"""Supervised baseline: the Improved-GAN classifier network trained on the labelled images only,
with the same optimiser, EMA and number of steps as the semi-supervised methods."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gencls.methods.base import Method, register_method
from gencls.nets import EMA, make_classifier, resolve_arch, scale_outputs


@register_method
class Supervised(Method):
    name = "supervised"
    description = "the same classifier network on the labelled images only (baseline)"
    unlabelled_batches = 0
    default_config = {"lr": 0.003, "beta1": 0.5, "adam_eps": 1e-4, "ema_decay": 0.999, "hidden": [1000, 500, 250, 250, 250],
                      "input_noise": 0.3, "hidden_noise": 0.5,
                      "arch": "auto", "conv_width": 96, "conv_lr": 0.0003}  # the network improved-gan picks

    def __init__(self, config, image_shape, num_classes):
        super().__init__(config, image_shape, num_classes)
        c = self.config
        self.arch = resolve_arch(c["arch"], self.image_shape)
        self.net = scale_outputs(make_classifier(self.arch, self.image_shape, num_classes, c))
        self.ema = EMA(self.net, c["ema_decay"])
        lr = c["lr"] if self.arch == "mlp" else c["conv_lr"]
        self.opt = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=lr,
                                    betas=(c["beta1"], 0.999), eps=c["adam_eps"], fused=True)

    def optimizers(self):
        return {"net": self.opt}

    def setup(self, x):
        self.net.data_init(x)
        self.ema.reset(self.net)

    def train_step(self, x_lab, y_lab, x_unl=None):
        logits, _ = self.net(x_lab)
        loss = F.cross_entropy(logits, y_lab)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_step(self.opt, {"loss_lab": loss})
        self.ema.update(self.net)
        return {"loss_lab": loss.detach(), "train_err": (logits.detach().argmax(1) != y_lab).float().mean()}

    def classify(self, x):
        with self.evaluating():
            return self.ema.shadow(x)[0]
