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
        self._updates = 0
        self._count: torch.Tensor | None = None  # the update count on a CUDA device (no host sync)
        self.shadow = copy.deepcopy(model).eval()
        self.shadow.requires_grad_(False)

    @property
    def updates(self) -> int:
        return self._updates if self._count is None else int(self._count)

    @updates.setter
    def updates(self, value: int) -> None:
        self._updates, self._count = int(value), None

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        self.shadow.load_state_dict(model.state_dict())
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = list(model.parameters())
        dst = list(self.shadow.parameters())
        if dst and dst[0].is_cuda:  # count and decay on the device: no sync, capturable in a CUDA graph
            if self._count is None or self._count.device != dst[0].device:
                self._count = torch.tensor(self._updates, dtype=torch.int64, device=dst[0].device)
            self._count.add_(1)
            w = 1.0 - ((1 + self._count) / (10 + self._count)).clamp_(max=self.decay)
            torch._foreach_lerp_(dst, src, [w] * len(dst))
        else:
            self._updates += 1
            d = min(self.decay, (1 + self._updates) / (10 + self._updates))
            torch._foreach_lerp_(dst, src, 1.0 - d)
        for b_dst, b_src in zip(self.shadow.buffers(), model.buffers()):
            b_dst.copy_(b_src)

    def train(self, mode: bool = True):  # the shadow always evaluates
        super().train(mode)
        self.shadow.eval()
        return self
