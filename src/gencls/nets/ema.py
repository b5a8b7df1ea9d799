"""Exponential moving average of a network's weights, used for evaluation."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Keeps ``shadow``, a copy of ``model`` whose parameters track an EMA of the model's.

    The decay warms up as min(decay, (1 + t) / (10 + t)) so that early averages are not
    dominated by the random initialisation. Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval()
        self.shadow.requires_grad_(False)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        self.shadow.load_state_dict(model.state_dict())
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        src = list(model.parameters())
        dst = list(self.shadow.parameters())
        torch._foreach_lerp_(dst, src, 1.0 - d)
        for b_dst, b_src in zip(self.shadow.buffers(), model.buffers()):
            b_dst.copy_(b_src)

    def train(self, mode: bool = True):  # the shadow always evaluates
        super().train(mode)
        self.shadow.eval()
        return self
