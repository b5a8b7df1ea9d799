"""The Python API; the CLI is a thin layer over these functions."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gencls.config import TrainConfig
from gencls.data import find_images, load_image, load_split
from gencls.errors import GenclsError, InputError
from gencls.evaluation.metrics import classification_report, predict_logits
from gencls.methods import Method, create_method
from gencls.training.checkpoint import load_checkpoint, validate_modules
from gencls.training.trainer import train as _train
from gencls.utils import atomic_write_json, resolve_device


def train(config: TrainConfig | dict | None = None, resume: bool = False, overwrite: bool = False,
          on_epoch_end=None, **kwargs) -> Path:
    """Train; ``gencls.train(method="improved-gan", labels=100, epochs=5, out="runs/x")`` works too.

    ``on_epoch_end(record, method)`` is called after every epoch (metrics record, live method).
    """
    if config is None:  # on resume, keyword settings are only what changes (see RESUMABLE_OVERRIDES)
        config = dict(kwargs) if resume else TrainConfig(**kwargs)
    elif kwargs:
        raise TypeError("pass either a config or keyword settings, not both")
    return _train(config, resume=resume, overwrite=overwrite, on_epoch_end=on_epoch_end)


@dataclass
class Run:
    """A trained model loaded from a run folder."""
    path: Path | None  # the run folder (None for a checkpoint file outside one)
    method: Method
    config: TrainConfig
    classes: list[str]
    image_shape: tuple[int, int, int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.method.device

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != tuple(self.image_shape):
            raise InputError(f"images of shape {tuple(x.shape[1:])} given; this model takes {tuple(self.image_shape)}")
        return x

    def logits(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Logits for images (N, C, H, W) with values in [0, 1]."""
        return predict_logits(self.method, self._check(x).float(), batch_size).cpu()

    def predict_proba(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        return self.logits(x, batch_size).softmax(1)

    def predict_classes(self, x: torch.Tensor) -> list[str]:
        return [self.classes[i] for i in self.logits(x).argmax(1).tolist()]


def load_run(path: str | Path, which: str = "best", device: str = "cpu") -> Run:
    """Load a run folder's ``best`` (default) or ``last`` checkpoint, or a checkpoint file."""
    path = Path(path)
    if path.is_file():  # a checkpoint file; results are written into its run folder, if it is in one
        ck_path = path
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    else:
        if not path.exists():
            raise InputError(f"{path}: no such run folder")
        ck_path, run_dir = path / "checkpoints" / f"{which}.safetensors", path
        if not ck_path.exists():
            raise InputError(f"{path}: not a finished run ({ck_path.relative_to(path)} missing)")
    state, meta = load_checkpoint(ck_path)
    try:
        cfg = TrainConfig.from_dict(meta["config"])
        classes, image_shape = list(meta["classes"]), tuple(meta["image_shape"])
        method = create_method(meta["method"], cfg.method_config, image_shape, len(classes))
    except (KeyError, TypeError) as e:
        raise InputError(f"{ck_path}: checkpoint metadata incomplete ({e})") from None
    modules = validate_modules(method, state["method"]["modules"], ck_path)
    method.load_state({**state["method"], "modules": modules}, with_optimizers=False)
    method.to(resolve_device(device)).eval()
    return Run(run_dir, method, cfg, classes, image_shape, meta)


def _as_run(run: Run | str | Path, device: str = "cpu") -> Run:
    return run if isinstance(run, Run) else load_run(run, device=device)


def evaluate(run: Run | str | Path, split: str = "test", data_root: str | None = None, write: bool = True,
             log=print) -> dict:
    """Error on the test set (or the saved validation split); writes eval.json and confusion.png."""
    run = _as_run(run)
    cfg = run.config
    root = data_root or cfg.data_root
    if split == "test":
        data = load_split(cfg.dataset, "test", root, log=log)
        x, y = data.images, data.labels
    elif split == "val":
        if run.path is None:
            raise GenclsError("--split val needs the run folder (its split.json), not a bare checkpoint file")
        data = load_split(cfg.dataset, "train", root, log=log)
        idx = torch.as_tensor(_split_indices(run)["validation"], dtype=torch.long)
        x, y = data.images[idx], data.labels[idx]
    else:
        raise GenclsError(f"--split {split}: test or val")
    logits = run.logits(x.float().div(255))
    report = {"split": split, "method": cfg.method, "dataset": cfg.dataset, "labels": cfg.labels,
              "checkpoint_epoch": run.meta.get("epoch"), "val_error": run.meta.get("val_error"),
              **classification_report(y, logits, run.classes)}
    if write and run.path is not None:
        from gencls.evaluation.plots import plot_confusion

        name = "eval.json" if split == "test" else f"eval_{split}.json"
        atomic_write_json(run.path / name, report)
        plot_confusion(report["confusion_matrix"], run.classes,
                       run.path / ("confusion.png" if split == "test" else f"confusion_{split}.png"),
                       title=f"{cfg.method}, {split} error {report['error_percent']:.2f}%")
    return report


def _split_indices(run: Run) -> dict:
    from gencls.utils import read_json

    d = read_json(run.path / "split.json")
    if d.get("subset") is not None:  # indices are into the subset
        sub = d["subset"]
        d = {**d, "validation": [sub[i] for i in d["validation"]], "labelled": [sub[i] for i in d["labelled"]]}
    return d


@dataclass
class Prediction:
    path: str
    label: str | None = None
    probability: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


def predict(run: Run | str | Path, paths: list[str | Path], top_k: int = 3, invert: str = "auto",
            batch_size: int = 256) -> list[Prediction]:
    """Classify image files and folders; an unreadable file gets ``error`` and the others go on."""
    run = _as_run(run)
    files = find_images(paths)
    results: list[Prediction] = []
    k = max(1, min(top_k, len(run.classes)))
    background = float(run.meta.get("background", 0.0))
    for start in range(0, len(files), batch_size):
        chunk, tensors, slots = files[start : start + batch_size], [], []
        for f in chunk:
            try:
                tensors.append(load_image(f, run.image_shape, invert=invert, background=background))
                slots.append(len(results))
                results.append(Prediction(str(f)))
            except InputError as e:
                results.append(Prediction(str(f), error=str(e)))
        if tensors:
            probs = run.predict_proba(torch.stack(tensors))
            top_p, top_i = probs.topk(k, dim=1)
            for slot, ps, ix in zip(slots, top_p.tolist(), top_i.tolist()):
                r = results[slot]
                r.top_k = [(run.classes[i], p) for i, p in zip(ix, ps)]
                r.label, r.probability = r.top_k[0]
    return results


def generate(run: Run | str | Path, n: int = 100, seed: int | None = None,
             labels: torch.Tensor | list[int] | None = None) -> torch.Tensor:
    """``n`` generated images (N, C, H, W) in [0, 1]; ``labels`` for class-conditional methods."""
    run = _as_run(run)
    if n < 1:
        raise GenclsError(f"--n {n}: must be at least 1")
    gen = torch.Generator(device=run.device)
    gen.manual_seed(seed if seed is not None else secrets.randbits(63))  # leaves the global RNG alone
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long, device=run.device)
    return run.method.generate(n, labels=labels, generator=gen).cpu()
