"""Several seeds of one method as one batched model (``gencls train --seeds ... --stack-seeds on``).

``StackedModules`` stacks the parameters and buffers of S copies of a network along a new first
dimension and calls the network on (S, ...) inputs through ``torch.func.vmap`` over
``functional_call``: every layer becomes one batched kernel for all seeds, which is what fills a
GPU with small models. Each copy's tensors are turned into views of its slice of the stacked
tensors, so the per-seed methods always hold the current weights: their evaluation, sampling and
checkpoints work unchanged, with no copying back.

``stacked_adam`` builds one Adam over stacked parameters whose moment buffers are likewise
viewed by the per-seed optimizers (Adam is element-wise, so one Adam over the stack is S
independent Adams). A method offers a batched step by overriding ``Method.stack(methods)``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from gencls.errors import GenclsError


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, leaf


class StackedModules:
    """S copies of one network (same structure), stacked; ``self(*inputs)`` runs all copies at
    once on inputs with a leading seed dimension (independent random draws per copy)."""

    def __init__(self, modules: list[nn.Module]):
        self.base = modules[0]  # its tensors are swapped for the stacked ones inside each call
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        for name, p in modules[0].named_parameters():
            copies = [dict(m.named_parameters())[name] for m in modules]
            stacked = torch.stack([c.detach() for c in copies]).requires_grad_(p.requires_grad)
            for s, c in enumerate(copies):
                c.data = stacked.detach()[s]  # the parameter object stays (optimizers hold it)
            self.params[name] = stacked
        for name, b in modules[0].named_buffers():
            stacked = torch.stack([dict(m.named_buffers())[name] for m in modules])
            for s, m in enumerate(modules):
                owner, leaf = _owner(m, name)
                owner._buffers[leaf] = stacked[s]
            self.buffers[name] = stacked
        self._call = vmap(self._one, in_dims=(0, 0, 0), randomness="different")

    def _one(self, params, buffers, x):
        return functional_call(self.base, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor):
        return self._call(self.params, self.buffers, x)

    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.params.values() if p.requires_grad]


def stacked_adam(stack: StackedModules, optimizers: list[torch.optim.Adam]) -> torch.optim.Adam:
    """One Adam over ``stack``'s trainable tensors, with the settings of ``optimizers`` (one per
    seed, over the same parameters in the same order) and their state (resumed runs); afterwards
    each per-seed optimizer's state is a view of its slice, so its ``state_dict()`` stays current."""
    group = optimizers[0].param_groups[0]
    params = stack.trainable()
    per_seed = [[p for g in o.param_groups for p in g["params"]] for o in optimizers]
    if any(len(ps) != len(params) for ps in per_seed):
        raise ValueError("the per-seed optimizers do not hold the stacked parameters")
    opt = torch.optim.Adam(params, lr=group["lr"], betas=group["betas"], eps=group["eps"],
                           weight_decay=group["weight_decay"], fused=group.get("fused"))
    for i, p in enumerate(params):
        olds = [o.state.get(ps[i], {}) for o, ps in zip(optimizers, per_seed)]
        started = all("exp_avg" in st for st in olds)
        if any("exp_avg" in st for st in olds) and not started:
            raise GenclsError("--stack-seeds: some seeds have taken optimizer steps and others not; "
                              "train them in turn (--stack-seeds off)")
        if started and len({float(st["step"]) for st in olds}) > 1:
            raise GenclsError("--stack-seeds: the seeds' optimizers have taken different numbers of steps "
                              f"({', '.join(str(int(st['step'])) for st in olds)}; e.g. after --on-nan skip in turn), "
                              "and one batched Adam has one step count; train them in turn (--stack-seeds off)")
        st = opt.state[p] = {
            "step": (olds[0]["step"].detach().clone().float() if started
                     else torch.zeros((), dtype=torch.float32)).to(p.device if group.get("fused") else "cpu"),
            "exp_avg": torch.stack([st["exp_avg"] for st in olds]) if started else torch.zeros_like(p),
            "exp_avg_sq": torch.stack([st["exp_avg_sq"] for st in olds]) if started else torch.zeros_like(p)}
        for s, (o, ps) in enumerate(zip(optimizers, per_seed)):
            o.state[ps[i]] = {"step": st["step"], "exp_avg": st["exp_avg"][s], "exp_avg_sq": st["exp_avg_sq"][s]}
    return opt
