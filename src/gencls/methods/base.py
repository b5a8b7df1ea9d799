"""The method contract and the registry.

A method is one file in this package, registered by name with ``@register_method`` (or one
module of another package, found through the entry-point group ``gencls.methods``). It is
built from (config, image shape, number of classes) and implements:

- ``setup(x)``: optional data-dependent initialisation from a batch of training images;
- ``train_step(x_lab, y_lab, x_unl) -> dict`` of scalar loss tensors (detached; ``float()`` them
  when you need numbers -- the trainer does so only when it reports, to avoid a host sync per step);
- ``classify(x) -> logits`` (evaluation mode, EMA weights where the method keeps them);
- ``generate(n, labels=None, generator=None) -> images`` in [0, 1], or ``CannotGenerate``;
  generating methods also split it into ``sample_latent(n, generator) -> z`` and
  ``decode_latent(z, labels=None) -> images`` (what ``gencls export --part generator`` exports),
  and name the latent distribution in ``latent_distribution``;
- ``ood_score(x) -> (N,)``: how much each input looks like the training data (higher = more
  alike); the default is the maximum softmax probability, methods with a better signal
  (a discriminator, a reconstruction or ELBO) override it and say what it is in ``ood_score_name``;
  ``classify_and_score(x) -> (logits, scores)`` gives both (override it when one pass can);
- ``state()`` / ``load_state(state)``: every network, optimizer and EMA, as nested dicts of
  tensors and plain values (the checkpoint module turns them into safetensors + JSON).

The trainer, data, evaluation and CLI only ever go through this interface.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import math
import re
import sys
import threading
from typing import Any, ClassVar

import torch
from torch import nn

from gencls.errors import GenclsError
from gencls.nets.ema import EMA


class CannotGenerate(GenclsError):
    """The method has no generator, or cannot condition on a class."""


class NonFiniteError(GenclsError):
    """A loss term or gradient norm is NaN, infinite or exploding (with the guard's policy "stop")."""


class StepGuard:
    """What ``Method.optimizer_step`` does with a non-finite loss or an exploding gradient norm.

    policy "stop" raises ``NonFiniteError`` (naming the term and its value); "skip" drops the
    update and counts it in ``skipped``. For optimizers built with ``fused=True`` the check runs
    on the device without a host sync: the flag goes to the optimizer as ``found_inf`` (fused
    Adam then leaves weights, moments and step count untouched), skipped steps are counted on the
    device, and after a "stop" failure every later update is masked too. The host looks at the
    flags in ``check()``: after every step unless ``lazy``; a lazy guard's owner (the trainer)
    calls ``check()`` every few steps, before any checkpoint and at epoch ends, so no update after
    a failure is ever applied or saved. Other optimizers take one host sync per step.
    """

    def __init__(self, policy: str = "stop", max_grad_norm: float = 1e6, skipped: int = 0, lazy: bool = False):
        self.policy = policy
        self.max_grad_norm = max_grad_norm
        self.lazy = lazy
        self._skipped = int(skipped)
        self._dev: dict[str, torch.Tensor] = {}  # device counters: "skipped", "halted"
        self._records: dict[int, dict] = {}  # per optimizer: names, count, first bad count, values then

    @property
    def skipped(self) -> int:
        """Updates dropped so far (a host sync when device-side counting is in use)."""
        return self._skipped + (int(self._dev["skipped"]) if self._dev else 0)

    @skipped.setter
    def skipped(self, value: int) -> None:
        self._skipped = int(value)
        if self._dev:
            self._dev["skipped"].zero_()

    def step(self, optimizer: torch.optim.Optimizer, terms: dict[str, torch.Tensor],
             seeds: list[str] | None = None) -> bool:
        """``seeds``: the optimizer holds several seeds' parameters stacked along their first
        dimension (``--stack-seeds``) and each term is a vector with one value per seed; then the
        gradient norm is checked per seed and a failure names its seed. (One fused Adam steps all
        seeds at once, so a failed seed drops the update of every seed.)"""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        n = len(seeds) if seeds else 1
        device = next(iter(terms.values())).device if terms else None
        if grads and seeds:  # per seed: the norms of each parameter's slices, then over the parameters
            norms = torch.stack(torch._foreach_norm([g[s] for g in grads for s in range(n)])).view(len(grads), n)
            gnorm = torch.linalg.vector_norm(norms, dim=0)
        elif grads:
            gnorm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).reshape(1)
        else:
            gnorm = torch.zeros(n, device=device)
        values = torch.cat([t.detach().float().reshape(-1) for t in terms.values()] + [gnorm.float()])
        who = [f" of {s}" for s in seeds] if seeds else [""]
        step_of = f" (the step on {' + '.join(terms)})" if terms else ""  # which network's update, in a GAN
        names = [f"{k}{w}" for k in terms for w in who] + [f"gradient norm{w}{step_of}" for w in who]
        if all(g.get("fused") for g in optimizer.param_groups):
            self._device_step(optimizer, names, values, n)
            if not self.lazy:
                self.check()
            return True
        return self._host_step(optimizer, names, values.tolist(), n)

    def _host_step(self, optimizer, names: list[str], values: list[float], n_norms: int = 1) -> bool:
        bad = next(((n, v) for n, v in zip(names, values) if not math.isfinite(v)), None)
        if bad is None:
            bad = _exploded(names, values, n_norms, self.max_grad_norm)
        if bad is None:
            optimizer.step()
            return True
        if self.policy == "stop":
            raise _non_finite(*bad, steps_ago=0)
        optimizer.zero_grad(set_to_none=True)
        self._skipped += 1
        return False

    def _device_step(self, optimizer, names: list[str], values: torch.Tensor, n_norms: int = 1) -> None:
        dev = values.device
        if not self._dev or self._dev["skipped"].device != dev:
            self._dev = {"skipped": torch.zeros((), dtype=torch.int64, device=dev),
                         "halted": torch.zeros((), dtype=torch.bool, device=dev)}
            self._records = {}
        rec = self._records.get(id(optimizer))
        if rec is None or rec["values"].shape != values.shape:
            rec = self._records[id(optimizer)] = {
                "names": names, "norms": n_norms, "count": torch.zeros((), dtype=torch.int64, device=dev),
                "first": torch.full((), -1, dtype=torch.int64, device=dev), "values": torch.zeros_like(values),
                "found_inf": torch.zeros((), device=dev)}
        bad = (~torch.isfinite(values)).any() | (values[-n_norms:] > self.max_grad_norm).any()
        rec["count"].add_(1)
        new = bad & (rec["first"] < 0)
        rec["first"].copy_(torch.where(new, rec["count"], rec["first"]))
        rec["values"].copy_(torch.where(new, values, rec["values"]))
        if self.policy == "stop":
            self._dev["halted"].logical_or_(bad)
            rec["found_inf"].copy_(self._dev["halted"])
        else:
            self._dev["skipped"].add_(bad)
            rec["found_inf"].copy_(bad)
        optimizer.found_inf = rec["found_inf"]  # fused Adam skips the whole update where it is 1
        optimizer.step()

    def check(self) -> None:
        """Raise ``NonFiniteError`` (policy "stop") if a device-side check failed since the start;
        ``steps_ago`` on the error says how many steps of that optimizer ago it was. One host sync."""
        if self.policy != "stop" or not self._records:
            return
        recs = list(self._records.values())
        info = torch.stack([torch.stack([r["first"], r["count"]]) for r in recs]).tolist()
        failed = [(first, count, r) for (first, count), r in zip(info, recs) if first >= 0]
        if not failed:
            return
        first, count, rec = max(failed, key=lambda f: f[1] - f[0])  # the earliest failure
        values = rec["values"].tolist()
        name, value = next(((n, v) for n, v in zip(rec["names"], values) if not math.isfinite(v)), (None, None))
        if name is None:
            name, value = (_exploded(rec["names"], values, rec["norms"], self.max_grad_norm)
                           or (rec["names"][-1], values[-1]))
        raise _non_finite(name, value, steps_ago=count - first)


def _exploded(names: list[str], values: list[float], n_norms: int, limit: float) -> tuple[str, float] | None:
    """The largest of the last ``n_norms`` values (gradient norms) if it is above ``limit``."""
    i = max(range(len(values) - n_norms, len(values)), key=lambda j: values[j])
    return (names[i], values[i]) if values[i] > limit else None


def _non_finite(name: str, value: float, steps_ago: int) -> NonFiniteError:
    what = "exploded" if math.isfinite(value) else "is not finite"
    err = NonFiniteError(f"{name} {what} ({value:.4g})")
    err.steps_ago = steps_ago
    return err


class Method(nn.Module):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    can_generate: ClassVar[bool] = False
    can_condition: ClassVar[bool] = False
    unlabelled_batches: ClassVar[int] = 1  # unlabelled batches per train_step (0: none wanted)
    default_config: ClassVar[dict[str, Any]] = {}
    ood_score_name: ClassVar[str] = "maximum softmax probability"
    latent_distribution: ClassVar[str] = ""  # generating methods: e.g. "uniform(0,1)" or "normal(0,1)"
    # published test errors, keyed "dataset/labels": {"error": "0.93 ± 0.065", "source": "..."}
    published_results: ClassVar[dict[str, dict[str, str]]] = {}
    # data-parallel training (gencls.training.distributed) sets this: (optimizer, terms) -> terms,
    # averaging the gradients and the terms over the processes before every optimizer step
    grad_sync = None
    _stacked = False  # True once its tensors are views of a batched model of several seeds (``stack``)

    def __init__(self, config: dict | None, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        unknown = sorted(set(config or {}) - set(self.default_config))
        if unknown:
            raise GenclsError(f"method {self.name}: unknown setting(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(self.default_config)) or 'none'})")
        self.config = {**self.default_config, **{k: _coerce(self.name, k, v, self.default_config[k])
                                                  for k, v in (config or {}).items()}}
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.guard = StepGuard()

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
        return self.decode_latent(self.sample_latent(n, generator), labels)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latent points (n, ...) from the generator's prior, on the method's device."""
        raise CannotGenerate(f"method {self.name} cannot generate images")

    def decode_latent(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] from latent vectors (and labels, for class-conditional methods)."""
        raise CannotGenerate(f"method {self.name} cannot generate images")

    def optimizer_step(self, optimizer: torch.optim.Optimizer, terms: dict[str, torch.Tensor]) -> bool:
        """Step ``optimizer`` on the gradients in ``.grad`` unless a loss term in ``terms`` or the
        gradient norm is not finite or above ``guard.max_grad_norm``; then raise (policy "stop")
        or drop the update and count it (policy "skip"). See ``StepGuard`` for when the host syncs.
        Returns False for an update dropped on the host (a device-side skip still returns True).
        Under data-parallel training the gradients and terms are first averaged over the processes
        (``grad_sync``), so every process takes the same step and the same decision."""
        if self.grad_sync is not None:
            terms = self.grad_sync(optimizer, terms)
        return self.guard.step(optimizer, terms)

    @staticmethod
    def grads_into(loss: torch.Tensor, params: list[torch.Tensor]) -> None:
        """Gradients of ``loss`` for ``params`` only (e.g. a generator's, not those of the
        discriminator it ran through) into ``.grad``, each in its parameter's memory layout: fused
        Adam reads a gradient in its parameter's layout (PyTorch 2.14's CPU kernel silently
        misreads a transposed one, as ``vmap`` can return)."""
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)

    @classmethod
    def can_stack(cls, methods: list["Method"]) -> bool:
        """Whether ``stack(methods, ...)`` gives a batched step (no side effects). By default:
        whether the class defines ``stack`` (a method that does, and not this, is asked ``stack``)."""
        return cls.stack.__func__ is not Method.stack.__func__

    @classmethod
    def stack(cls, methods: list["Method"], guard: StepGuard):
        """A batched training step for several seeds' copies of this method (``--stack-seeds``),
        or None when the method has none (then the seeds' steps run one after another). It returns
        an object with ``train_step(x_lab, y_lab, x_unl) -> dict`` of (S,) tensors, taking inputs
        with a leading seed dimension, that steps all copies at once and keeps each copy's weights,
        optimizer state and EMA current (see ``gencls.methods.stacking``); ``guard`` guards its
        optimizer steps (``StepGuard.step(..., seeds=...)``: per-seed terms and gradient norms),
        naming a failed seed by its entry in the object's ``seed_names`` (the trainer sets them)."""
        return None

    def compile_networks(self, **options) -> None:
        """``torch.compile`` the networks the training step calls (``--compile``); EMA copies stay eager."""
        for module in self.children():
            if not isinstance(module, EMA):
                module.compile(**options)

    def ood_score(self, x: torch.Tensor) -> torch.Tensor:
        """Per image: higher means more like the training data. Default: max softmax probability."""
        return self.classify(x).softmax(1).amax(1)

    def classify_and_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(classify(x), ood_score(x))``; methods whose score comes from the same pass override it."""
        return self.classify(x), self.ood_score(x)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Plain values (ints, floats) beyond module and optimizer state: by default the update
        count of an ``EMA`` kept as ``self.ema`` (it sets the EMA's warm-up)."""
        ema = getattr(self, "ema", None)
        return {"ema_updates": ema.updates} if isinstance(ema, EMA) else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        ema = getattr(self, "ema", None)
        if isinstance(ema, EMA):
            ema.updates = int(state.get("ema_updates", 0))

    # --- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"modules": self.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
                "extra": self.extra_state()}

    def load_state(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        if self._stacked:
            raise GenclsError(f"method {self.name}: its weights and optimizer state are views of a batched model "
                              "of several seeds (--stack-seeds); load a state before stacking, not after")
        self.load_state_dict(state["modules"])
        if with_optimizers:
            for k, opt in self.optimizers().items():
                # how the update runs is this method's choice, not the checkpoint's
                how = [{h: g.get(h) for h in ("fused", "foreach", "capturable")} for g in opt.param_groups]
                opt.load_state_dict(state["optimizers"][k])
                for g, h in zip(opt.param_groups, how):
                    g.update(h)
                    for p in g["params"] if h["fused"] or h["capturable"] else ():  # their step lives by the weight
                        if "step" in opt.state.get(p, {}):
                            opt.state[p]["step"] = opt.state[p]["step"].to(p.device, torch.float32)
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

    def trained_parameter_count(self) -> int:
        """Parameters the optimizers update (no EMA copies, no fixed scales); all if no optimizer."""
        seen = {id(p): p for opt in self.optimizers().values() for g in opt.param_groups for p in g["params"]}
        return sum(p.numel() for p in seen.values()) if seen else self.parameter_count()


_METHODS: dict[str, type[Method]] = {}

# --- methods from other packages: entry points -----------------------------------------------
# A package adds methods by declaring, in its pyproject.toml,
#     [project.entry-points."gencls.methods"]
#     my-method = "my_package.my_method"          # a module whose import registers methods
# (or "my_package.my_method:MyMethod", a Method subclass, registered if its import did not).
# They are imported once per process, at the first lookup or listing of a method name, so the
# command line, loading a run and compare's worker processes all see them. A plugin that fails
# to import adds nothing, is named in one warning line, and leaves every other method working.
ENTRY_POINT_GROUP = "gencls.methods"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # goes into folder names, --set METHOD:KEY, --methods a,b
_SOURCES: dict[str, str] = {}  # method name -> the plugin or module that registered it (not for gencls's own)
_FAILURES: dict[str, str] = {}  # plugin -> why it did not load
_plugins = "new"  # -> "loading" -> "done"
_plugin_lock = threading.RLock()
_loading: str | None = None  # the plugin being imported: its registrations are credited to it


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``. A name already taken by another
    class is refused (``GenclsError``); registering a class again, or a redefinition of the same
    module and class name (a notebook cell run twice), replaces it."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method: {cls!r} is not a subclass of gencls.methods.Method")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if not isinstance(cls.name, str) or not _NAME.fullmatch(cls.name):
        raise GenclsError(f"method name {cls.name!r} ({_where(cls)}): letters, digits, '.', '_' and '-' only, "
                          "starting with a letter or digit")
    old = _METHODS.get(cls.name)
    if old is not None and _where(old) != _where(cls):
        taken = f"{_where(old)}" + (f", from {_SOURCES[cls.name]}" if cls.name in _SOURCES else "")
        raise GenclsError(f"method name '{cls.name}' is already registered (by {taken}); "
                          f"{_where(cls)} needs another name")
    _METHODS[cls.name] = cls
    if _loading is not None:
        _SOURCES[cls.name] = _loading
    elif not cls.__module__.startswith("gencls."):
        _SOURCES[cls.name] = f"module {cls.__module__}"
    return cls


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_plugins() -> None:
    """Import every ``gencls.methods`` entry point, once per process (thread-safe; a plugin that
    looks a method up while it is imported sees the methods registered so far)."""
    global _plugins, _loading
    if _plugins == "done":
        return
    with _plugin_lock:
        if _plugins != "new":  # done by another thread meanwhile, or this thread is importing a plugin
            return
        _plugins = "loading"
        try:
            try:
                eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
            except Exception as e:  # noqa: BLE001 -- e.g. a malformed entry_points.txt somewhere on the path
                _plugin_failed(f"(the entry points of group {ENTRY_POINT_GROUP})", e)
                eps = []
            seen = set()
            for ep in eps:
                if (ep.name, ep.value) in seen:  # the same distribution twice on the path
                    continue
                seen.add((ep.name, ep.value))
                who = f"{_distribution(ep)} (entry point {ep.name} = {ep.value})"
                before, sources = dict(_METHODS), dict(_SOURCES)
                _loading = who
                try:
                    obj = ep.load()
                    if isinstance(obj, type) and issubclass(obj, Method) and _METHODS.get(obj.name) is not obj:
                        register_method(obj)
                except (Exception, SystemExit) as e:  # noqa: BLE001 -- a broken plugin must not take the others down
                    _METHODS.clear(), _METHODS.update(before)  # a failed plugin adds nothing
                    _SOURCES.clear(), _SOURCES.update(sources)
                    _plugin_failed(who, e)
                finally:
                    _loading = None
        finally:
            _plugins = "done"


def _distribution(ep) -> str:
    try:
        return f"{ep.dist.name} {ep.dist.version}"
    except Exception:  # noqa: BLE001 -- no or unreadable metadata: the entry point still names it
        return "(unknown distribution)"


def _plugin_failed(who: str, e: BaseException) -> None:
    """Record a plugin that did not load and say so in one line on stderr."""
    why = " ".join(f"{type(e).__name__}: {e}".split())
    _FAILURES[who] = why
    sys.stderr.write(f"gencls: warning: plugin {who} failed to load: {why}; its methods are not available\n")


def plugin_failures() -> dict[str, str]:
    """The plugins (entry points of group ``gencls.methods``) that failed to load, and why."""
    _load_plugins()
    return dict(_FAILURES)


def method_source(name: str) -> str | None:
    """Where method ``name`` comes from: None for gencls's own, else the plugin (distribution,
    version, entry point) or the module that registered it."""
    get_method_class(name)
    return _SOURCES.get(name)


def list_methods() -> list[str]:
    _load_plugins()
    return sorted(_METHODS)


def get_method_class(name: str) -> type[Method]:
    _load_plugins()
    try:
        return _METHODS[name]
    except KeyError:
        failed = "".join(f"; plugin {who} failed to load: {why}" for who, why in _FAILURES.items())
        raise GenclsError(f"unknown method '{name}' (known: {', '.join(list_methods())}{failed}; other packages "
                          f"add methods through the entry-point group {ENTRY_POINT_GROUP})") from None


def create_method(name: str, config: dict | None, image_shape, num_classes: int) -> Method:
    cls = get_method_class(name)
    try:
        return cls(config, tuple(image_shape), int(num_classes))
    except (ValueError, TypeError) as e:  # e.g. an optimiser refusing lr=-1
        raise GenclsError(f"method {name}: invalid setting ({e})") from None


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    """A setting given on the command line, converted to the type of its default."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(value)
            return v
        if isinstance(default, (list, tuple)):
            return [type(default[0])(x) for x in value] if default else list(value)
    except (ValueError, TypeError):
        raise GenclsError(f"method {method}: setting {key}={value!r} must be a {type(default).__name__}") from None
    return value
