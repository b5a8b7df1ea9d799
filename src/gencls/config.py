"""The resolved training configuration, saved as ``config.json`` in every run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gencls.errors import GenclsError


@dataclass
class TrainConfig:
    method: str = "improved-gan"
    dataset: str = "mnist"
    labels: int | str | None = None  # a count, or "all"; None: the dataset's default (100; folders: "all")
    # these rows of the training set (0-based, before --subset) are the labelled images, instead of a
    # seeded balanced draw (``--labelled FILE``); ``labels`` is then their count
    labelled: list[int] | None = None
    val_size: int | None = None  # None: the dataset's default (min(5000, 10% of training images); folders: 0)
    subset: int | None = None  # use a random subset of this many training images (quick experiments)
    epochs: int = 10
    minutes: float | None = None  # stop after this much training time (at an epoch end)
    batch_size: int = 100
    seed: int = 1
    data_seed: int | None = None  # None: 1 for one run; with ``seeds``, each seed draws its own split
    seeds: list[int] | None = None  # several seeds in one process, run folders OUT/seed-S (``--seeds``)
    stack_seeds: str = "auto"  # with seeds: "on" batched networks, "off" one step after another, "auto" on for CUDA
    device: str = "auto"
    out: str = "runs/run"
    data_root: str | None = None
    method_config: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    sample_every: int = 1  # write a sample grid every N epochs (0: never)
    eval_every: int = 1  # validate and checkpoint every N epochs (and after the last)
    tensorboard: bool = True
    progress: bool = True
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: epoch ends only)
    keep: int = 0  # keep the checkpoints of the last K epochs besides last and best
    on_nan: str = "stop"  # a non-finite loss or exploding gradient: "stop" or "skip" the batch
    max_grad_norm: float = 1e6  # a gradient norm above this counts as exploding
    image_size: list[int] | None = None  # [H, W] to resize the images to; None: the dataset's (saved resolved)
    channels: int | None = None  # 1 or 3; None: the dataset's (saved resolved)
    arch: str | None = None  # networks of methods that have a choice: auto, mlp or conv (method setting "arch")
    precision: str = "fp32"  # "bf16": autocast matrix products to bfloat16; "tf32": TF32 tensor cores (CUDA)
    compile: bool = False  # torch.compile the networks of the training step
    cuda_graphs: bool = False  # capture the whole training step as one CUDA graph (CUDA only)
    # [start, end]: every optimizer's learning rate is the method's until epoch start, then falls
    # linearly towards 0 at epoch end (the factor at epoch e is min(1, (end - (e - 1)) / (end - start)),
    # the reference CIFAR-10 code's min(3 - t/400, 1) for [800, 1200]); None: constant
    lr_decay: list[int] | None = None
    # how a folder dataset without test/ holds out its test split (gencls.data.folder._hold_out_test):
    # 2 (per file, stable when files are added) for new runs; a saved config without it is a run made
    # before rule 2, and loads as 1 (see from_dict)
    folder_test_rule: int = 2

    def validate(self) -> "TrainConfig":
        from gencls.data.datasets import parse_image_size
        from gencls.nets.cifar import ARCHES

        if self.image_size is not None:
            self.image_size = list(parse_image_size(self.image_size))
        if self.channels is not None and self.channels not in (1, 3):
            raise GenclsError(f"--channels {self.channels}: 1 (grayscale) or 3 (RGB)")
        if self.arch is not None and self.arch not in ARCHES:
            raise GenclsError(f"--arch {self.arch}: one of {', '.join(ARCHES)}")
        if isinstance(self.labels, str):
            if self.labels != "all":
                try:
                    self.labels = int(self.labels)
                except ValueError:
                    raise GenclsError(f"--labels {self.labels!r}: a number of labelled images or 'all'") from None
        if self.labels is not None and self.labels != "all" and self.labels <= 0:
            raise GenclsError(f"--labels {self.labels}: must be positive (or 'all')")
        if self.labelled is not None:
            rows = self.labelled
            if not isinstance(rows, (list, tuple)) or not rows:
                raise GenclsError("--labelled: give at least one row of the training set")
            bad = [r for r in rows if isinstance(r, bool) or not isinstance(r, int) or r < 0]
            if bad:
                raise GenclsError(f"--labelled: {bad[0]!r} is not a row of the training set (0, 1, 2, ...)")
            rows = sorted(rows)
            twice = [a for a, b in zip(rows, rows[1:]) if a == b]
            if twice:
                raise GenclsError(f"--labelled: row {twice[0]} is listed twice")
            self.labelled = rows
            if self.labels is not None and self.labels != len(rows):
                raise GenclsError(f"--labels {self.labels} and --labelled ({len(rows)} rows) disagree: give one")
        if self.epochs < 1:
            raise GenclsError(f"--epochs {self.epochs}: must be at least 1")
        if self.minutes is not None and self.minutes <= 0:
            raise GenclsError(f"--minutes {self.minutes}: must be positive")
        if self.batch_size < 2:
            raise GenclsError(f"--batch-size {self.batch_size}: must be at least 2")
        if self.subset is not None and self.subset <= 0:
            raise GenclsError(f"--subset {self.subset}: must be positive")
        if self.val_size is not None and self.val_size < 0:
            raise GenclsError(f"--val-size {self.val_size}: must be 0 or more")
        if self.seeds is None and self.data_seed is None:
            self.data_seed = 1
        for name in ("seed", "data_seed"):
            v = getattr(self, name)
            if name == "data_seed" and v is None:
                continue
            if not isinstance(v, int) or not 0 <= v < 2**31:
                raise GenclsError(f"--{name.replace('_', '-')} {v}: must be an integer in [0, 2^31)")
        if self.seeds is not None:
            if isinstance(self.seeds, str):
                self.seeds = parse_seeds(self.seeds)
            self.seeds = [int(s) for s in self.seeds]
            if not self.seeds or len(set(self.seeds)) != len(self.seeds) or not all(0 <= s < 2**31 for s in self.seeds):
                raise GenclsError(f"--seeds {','.join(map(str, self.seeds))}: distinct integers in [0, 2^31)")
        if (self.labelled is not None and self.subset is not None and self.seeds is not None and len(self.seeds) > 1
                and self.data_seed is None):
            raise GenclsError(f"--labelled with --subset {self.subset} and --seeds: each seed draws its own --subset "
                              "images (data seed S), so the --labelled rows are not among every seed's; give "
                              "--data-seed D (one subset for every seed) or leave out --subset")
        if self.stack_seeds not in ("auto", "on", "off"):
            raise GenclsError(f"--stack-seeds {self.stack_seeds}: auto, on or off")
        if self.sample_every < 0 or self.eval_every < 1:
            raise GenclsError("--sample-every must be 0 or more and --eval-every at least 1")
        if self.checkpoint_every < 0 or self.keep < 0:
            raise GenclsError("--checkpoint-every and --keep must be 0 or more")
        if self.on_nan not in ("stop", "skip"):
            raise GenclsError(f"--on-nan {self.on_nan}: stop or skip")
        if not self.max_grad_norm > 0:
            raise GenclsError(f"--max-grad-norm {self.max_grad_norm}: must be positive")
        if self.precision not in ("fp32", "tf32", "bf16"):
            raise GenclsError(f"--precision {self.precision}: fp32, tf32 or bf16")
        if self.cuda_graphs and not str(self.device).startswith(("cuda", "auto")):
            raise GenclsError(f"--cuda-graphs needs a CUDA device (--device {self.device})")
        if self.lr_decay is not None:
            d = self.lr_decay
            if (not isinstance(d, (list, tuple)) or len(d) != 2 or not all(type(v) is int for v in d)
                    or not 0 <= d[0] < d[1]):
                raise GenclsError(f"--lr-decay {d}: two epochs START END with 0 <= START < END")
            self.lr_decay = [int(d[0]), int(d[1])]
            if self.cuda_graphs:
                raise GenclsError("--lr-decay cannot be used with --cuda-graphs (the captured step keeps its "
                                  "learning rate)")
            if self.stack_seeds == "on" and self.seeds is not None and len(self.seeds) > 1:
                raise GenclsError("--lr-decay schedules each run's own optimizers: not with --stack-seeds on")
            if self.epochs > self.lr_decay[1]:
                raise GenclsError(f"--epochs {self.epochs} goes past --lr-decay's end (epoch {self.lr_decay[1]}), "
                                  "where the learning rate reaches 0; give a later END (on --resume too)")
        if self.folder_test_rule not in (1, 2):
            raise GenclsError(f"folder_test_rule {self.folder_test_rule!r}: 1 or 2")
        if self.threads is not None and self.threads < 1:
            raise GenclsError(f"--threads {self.threads}: must be at least 1")
        return self

    def for_seed(self, seed: int) -> "TrainConfig":
        """The configuration of one seed's run under ``seeds``: folder OUT/seed-S, data seed S
        unless one data seed was given for all."""
        from dataclasses import replace
        from pathlib import Path

        return replace(self, seeds=None, seed=int(seed), data_seed=int(seed) if self.data_seed is None else self.data_seed,
                       out=str(Path(self.out) / f"seed-{seed}"), method_config=dict(self.method_config))

    def fill_from_data(self, image_shape, defaults: dict, n_train: int) -> "TrainConfig":
        """Settings left unset, from the data: its defaults, its image size and channels; ``arch``
        goes into the method's settings (so that a saved run rebuilds the same networks)."""
        if self.labelled is not None:
            self.labels = len(self.labelled)
        if self.labels is None:
            self.labels = defaults.get("labels", 100)
        if self.val_size is None:
            self.val_size = defaults.get("val_size", min(5000, n_train // 10))
        self.channels, self.image_size = int(image_shape[0]), [int(image_shape[1]), int(image_shape[2])]
        if self.arch is not None:
            from gencls.methods import get_method_class

            if "arch" not in get_method_class(self.method).default_config:
                raise GenclsError(f"--arch {self.arch}: method {self.method} has one set of networks (no choice of arch)")
            self.method_config = {**self.method_config, "arch": self.arch}
        return self.validate()

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], saved: bool = True) -> "TrainConfig":
        """The configuration in ``d`` (unknown keys ignored). ``saved``: ``d`` was written by a run
        (config.json, a checkpoint, seeds.json), and a setting added since that is missing from it
        takes the value that reproduces that run (``folder_test_rule``: 1). ``saved=False``: ``d``
        holds a new run's settings, missing ones take their defaults."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if saved:
            kw.setdefault("folder_test_rule", 1)
        return cls(**kw)


# keys a run writes into config.json that are not settings of a new run
_RUN_RECORD_KEYS = ("world_size", "given")
# every setting a run's config.json held in the first release (tests/fixtures/run_v1)
_FIRST_RELEASE_KEYS = ("batch_size", "checkpoint_every", "data_root", "data_seed", "dataset", "device", "epochs",
                       "keep", "labels", "max_grad_norm", "method", "method_config", "minutes", "on_nan", "out",
                       "progress", "sample_every", "seed", "subset", "tensorboard", "threads", "val_size")
# settings a run resolves from its data and saves (config.json): not carried over to another dataset
DATA_DERIVED = ("image_size", "channels", "labels", "val_size")
# the value types a settings file may give each setting ("int" excludes bool)
_TYPES = {"labels": ("int", "str"), "labelled": ("list",), "val_size": ("int",), "subset": ("int",), "epochs": ("int",),
          "minutes": ("number",), "batch_size": ("int",), "seed": ("int",), "data_seed": ("int",),
          "seeds": ("list", "str"), "stack_seeds": ("str",), "device": ("str",), "out": ("str",),
          "data_root": ("str",), "method_config": ("dict",), "threads": ("int",), "sample_every": ("int",),
          "eval_every": ("int",), "tensorboard": ("bool",), "progress": ("bool",), "checkpoint_every": ("int",),
          "keep": ("int",), "on_nan": ("str",), "max_grad_norm": ("number",), "image_size": ("list", "int", "str"),
          "channels": ("int",), "arch": ("str",), "precision": ("str",), "compile": ("bool",),
          "cuda_graphs": ("bool",), "lr_decay": ("list",), "folder_test_rule": ("int",), "method": ("str",), "dataset": ("str",)}


def _is(v, kind: str) -> bool:
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, {"str": str, "bool": bool, "list": list, "dict": dict}[kind])


def read_config_file(path) -> tuple[dict[str, Any], bool]:
    """Settings from a JSON or TOML file (``train --config``): TrainConfig's field names
    (``val_size`` or ``val-size``). Returns them and whether the file is a run's own record (its
    ``config.json``: settings resolved from its data, and missing newer settings mean the values
    that reproduce it). Unknown keys and values of the wrong type are errors naming them."""
    d, record, _ = _read_config_file(path)
    return d, record


def _read_config_file(path) -> tuple[dict[str, Any], bool, dict[str, Any]]:
    """``read_config_file``, and a run record's data settings as asked (``given``; None if it has none)."""
    import json
    import tomllib
    from pathlib import Path

    from gencls.utils import read_user_file

    path = Path(path)
    text = read_user_file(path, "--config")
    try:
        d = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON (name a TOML file *.toml)"
        raise GenclsError(f"--config {path}: not valid {kind}: {e}") from None
    if not isinstance(d, dict):
        raise GenclsError(f"--config {path}: expected a table of settings")
    # a run's config.json: it has what only a run writes (world_size) or, from runs older than
    # that, every setting the first release saved (a settings file written by hand names a few)
    record = any(k in d for k in _RUN_RECORD_KEYS) or all(k in d for k in _FIRST_RELEASE_KEYS)
    given = d.get("given") if record else None
    d = {k.replace("-", "_"): v for k, v in d.items() if k not in _RUN_RECORD_KEYS}
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(k for k in d if k not in names)
    if unknown:
        raise GenclsError(f"--config {path}: unknown setting{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)} (known: {', '.join(sorted(names))})")
    for k, v in d.items():
        if v is not None and not any(_is(v, kind) for kind in _TYPES.get(k, ())):
            want = " or ".join({"int": "an integer", "number": "a number", "str": "a string", "bool": "true/false",
                                "list": "a list", "dict": "a table"}[t] for t in _TYPES[k])
            raise GenclsError(f"--config {path}: {k} = {v!r} must be {want}")
    if record:
        d.setdefault("folder_test_rule", 1)  # a run made before rule 2 keeps its test split
    if isinstance(given, dict):
        given = {k: v for k, v in given.items()
                 if k in DATA_DERIVED and v is not None and any(_is(v, kind) for kind in _TYPES.get(k, ()))}
    else:
        given = None  # a run from before config.json kept them, or not a run's record
    return d, record, given


def config_with_file(path, given: dict[str, Any]) -> dict[str, Any]:
    """The settings of a new run: the file's (``read_config_file``) with ``given`` (flags) on top.

    ``given["method_config"]`` adds to the file's method settings; another method drops them;
    ``given["seed"]`` without ``seeds`` makes one run; ``seeds`` without ``data_seed`` lets each
    seed draw its own split. The sizes a run's config.json resolved from its data (image size,
    channels, label and validation counts) are replaced by what the run was asked for where its
    record says (``given``: e.g. ``--labels 100``, the rest left to the data); a run from before
    ``given`` keeps them on its own dataset and drops them on another."""
    base, record, asked = _read_config_file(path)
    if "method" in base and given.get("method", base["method"]) != base["method"]:
        base.pop("method_config", None)  # another method: the file's method settings do not apply
    if "method_config" in given:
        given = {**given, "method_config": {**(base.get("method_config") or {}), **given["method_config"]}}
    if "seed" in given and "seeds" not in given:
        base.pop("seeds", None)  # --seed: one run, whatever the file says
    if record and "seeds" in given and "data_seed" not in given:
        base.pop("data_seed", None)  # a run resolved its data_seed: each seed its own draw, as without a file
    if record and "dataset" in given and given["dataset"] != base.get("dataset"):
        for k in (*DATA_DERIVED, "folder_test_rule"):  # another dataset: its own sizes, the current rule
            base.pop(k, None)
    if asked is not None:  # the run says what it was asked for (--labels 100): that, not what it resolved to
        for k in DATA_DERIVED:
            base.pop(k, None)
        base.update(asked)
    if "labelled" in given or "labels" in given:  # the flags choose the labelled images: the file's choice goes
        base.pop("labels", None)
        base.pop("labelled", None)
    if base.get("labelled") and "dataset" in given and given["dataset"] != base.get("dataset"):
        n = len(base.pop("labelled"))  # rows of the file's dataset: on another, the same number of labels
        base.setdefault("labels", n)
    return {**base, **given}


MAX_SEEDS = 1000  # seeds in one --seeds run (each is a whole model)


def parse_seeds(text: str) -> list[int]:
    """``1,2,3`` or ``1-5`` (or a mix: ``1-3,7``) -> a list of seeds."""
    seeds = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                if int(b) - int(a) + 1 + len(seeds) > MAX_SEEDS:
                    raise GenclsError(f"--seeds {text}: at most {MAX_SEEDS} seeds in one run")
                seeds.extend(range(int(a), int(b) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise GenclsError(f"--seeds {text}: give seeds as 1,2,3 or 1-5") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise GenclsError(f"--seeds {text}: give distinct seeds >= 0 as 1,2,3 or 1-5")
    return seeds
