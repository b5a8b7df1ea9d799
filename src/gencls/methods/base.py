"""The method contract and the registry.

A method is one file in this package, registered by name with ``@register_method``. It is
built from (config, image shape, number of classes) and implements:

- ``setup(x)``: optional data-dependent initialisation from a batch of training images;
- ``train_step(x_lab, y_lab, x_unl) -> dict`` of scalar loss tensors (detached; ``float()`` them
  when you need numbers -- the trainer does so only when it reports, to avoid a host sync per step);
- ``classify(x) -> logits`` (evaluation mode, EMA weights where the method keeps them);
- ``sample_latent(n, generator=None) -> z`` and ``decode(z, labels=None) -> images`` in [0, 1]
  for methods that generate (``can_generate``; ``can_condition`` if ``labels`` pick the class);
  ``generate(n, labels=None, generator=None)`` is ``decode(sample_latent(n))`` and raises
  ``CannotGenerate`` for a method without a generator, or given labels it cannot condition on;
- ``ood_score(x) -> (N,)``: how much each input looks like the training data (higher = more
  alike); the default is the maximum softmax probability, methods with a better signal
  (a discriminator, a reconstruction or ELBO) override it;
- ``state()`` / ``load_state(state)``: every network, optimizer and EMA, as nested dicts of
  tensors and plain values (the checkpoint module turns them into safetensors + JSON).

The trainer, data, evaluation and CLI only ever go through this interface.
"""
from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn

from gencls.errors import GenclsError


class CannotGenerate(GenclsError):
    """The method has no generator, or cannot condition on a class."""


class Method(nn.Module):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    can_generate: ClassVar[bool] = False
    can_condition: ClassVar[bool] = False
    unlabelled_batches: ClassVar[int] = 1  # unlabelled batches per train_step (0: none wanted)
    default_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: dict | None, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        unknown = sorted(set(config or {}) - set(self.default_config))
        if unknown:
            raise GenclsError(f"method {self.name}: unknown setting(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(self.default_config)) or 'none'})")
        self.config = {**self.default_config, **(config or {})}
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes

    # --- the contract ---------------------------------------------------------------------
    def setup(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation before the first step (default: nothing)."""

    def train_step(self, x_lab: torch.Tensor, y_lab: torch.Tensor, x_unl: torch.Tensor | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, n: int, labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images in [0, 1]; ``labels`` (n,) picks their classes where ``can_condition``."""
        if labels is not None and not self.can_condition:
            raise CannotGenerate(f"method {self.name} cannot generate a chosen class: "
                                 + ("its generator is unconditional" if self.can_generate else "it has no generator"))
        return self.decode(self.sample_latent(n, generator), labels)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latent points (n, ...) from the generator's prior, on the method's device."""
        raise CannotGenerate(f"method {self.name} cannot generate images")

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] from latent points (and classes, where ``can_condition``); eval mode."""
        raise CannotGenerate(f"method {self.name} cannot generate images")

    def ood_score(self, x: torch.Tensor) -> torch.Tensor:
        """Per image: higher means more like the training data. Default: max softmax probability."""
        return self.classify(x).softmax(1).amax(1)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Plain values (ints, floats) beyond module and optimizer state."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # --- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"modules": self.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
                "extra": self.extra_state()}

    def load_state(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        self.load_state_dict(state["modules"])
        if with_optimizers:
            for k, opt in self.optimizers().items():
                opt.load_state_dict(state["optimizers"][k])
        self.load_extra_state(state.get("extra", {}))

    @contextlib.contextmanager
    def evaluating(self):
        """Eval mode and no grad inside; the previous mode is restored after."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method_class(name: str) -> type[Method]:
    try:
        return _METHODS[name]
    except KeyError:
        raise GenclsError(f"unknown method '{name}' (known: {', '.join(list_methods())})") from None


def create_method(name: str, config: dict | None, image_shape, num_classes: int) -> Method:
    return get_method_class(name)(config, tuple(image_shape), int(num_classes))
