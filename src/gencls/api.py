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
from gencls.results import Prediction
from gencls.training.checkpoint import load_checkpoint, validate_modules
from gencls.training.trainer import train as _train
from gencls.utils import atomic_write_json, read_json, resolve_device


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
    checkpoint: Path | None = None
    ood: dict[str, Any] | None = None  # the out-of-distribution calibration (see ``ood_calibration``)

    @property
    def device(self) -> torch.device:
        return self.method.device

    @property
    def background(self) -> float:
        return float(self.meta.get("background", 0.0))

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

    def ood_scores(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """How much each image looks like the training data (higher = more alike), ``method.ood_score``."""
        from gencls.evaluation.ood import score_batches

        return score_batches(self.method, self._check(x).float(), batch_size)

    def probabilities_and_scores(self, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities and out-of-distribution scores, from one pass where the method can."""
        x = self._check(x).float()
        probs, scores = [], []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                logits, score = self.method.classify_and_score(x[i : i + batch_size].to(self.device))
                probs.append(logits.float().softmax(1).cpu())
                scores.append(score.float().cpu())
        if not probs:
            return torch.empty(0, len(self.classes)), torch.empty(0)
        return torch.cat(probs), torch.cat(scores)

    def analyse(self, x: torch.Tensor, top_k: int = 3) -> list[dict[str, Any]]:
        """Per image: class, probability, top-k, out-of-distribution score and flag."""
        probs, scores = self.probabilities_and_scores(x)
        return describe(self, probs, scores, top_k)


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
    return Run(run_dir, method, cfg, classes, image_shape, meta, checkpoint=ck_path)


def describe(run: Run, probs: torch.Tensor, scores: torch.Tensor, top_k: int = 3) -> list[dict[str, Any]]:
    """Rows of class, probability, top-k, ood_score and ood_flag from probabilities and scores."""
    k = max(1, min(top_k, len(run.classes)))
    top_p, top_i = probs.topk(k, dim=1)
    threshold = ood_calibration(run)["threshold"] if run.ood is None else run.ood["threshold"]
    rows = []
    for ps, ix, sc in zip(top_p.tolist(), top_i.tolist(), scores.tolist()):
        rows.append({"class": run.classes[ix[0]], "probability": ps[0],
                     "top_k": [{"class": run.classes[i], "probability": p} for i, p in zip(ix, ps)],
                     "ood_score": sc, "ood_flag": None if threshold is None else bool(sc < threshold)})
    return rows


def _checkpoint_key(run: Run) -> dict[str, Any]:
    return {"checkpoint": run.checkpoint.name if run.checkpoint else None, "epoch": run.meta.get("epoch"),
            "step": run.meta.get("step")}


def ood_calibration(run: Run | str | Path, data_root: str | None = None, write: bool = True,
                    log=print) -> dict[str, Any]:
    """The out-of-distribution threshold of a run, calibrated on its validation split.

    Computed the first time it is needed (by ``predict``, ``evaluate``, ``serve``, ``export``) and
    kept in ``ood.json`` in the run folder, keyed by the checkpoint (file, epoch, step); a run
    folder that cannot be written keeps it in memory. The threshold is the ``OOD_PERCENTILE``-th
    percentile (1%) of the validation images' scores: inputs scoring below it are flagged.
    """
    from gencls.evaluation.ood import OOD_PERCENTILE, calibrate_threshold, summary

    run = _as_run(run)
    if run.ood is not None:
        return run.ood
    key = _checkpoint_key(run)
    if run.path is None:  # a bare checkpoint file: no validation split to calibrate on
        run.ood = {**key, "threshold": None, "note": "no run folder, so no validation split to calibrate on"}
        return run.ood
    path = run.path / "ood.json"
    if path.exists():
        try:
            saved = read_json(path)
        except GenclsError:
            saved = {}
        if ({k: saved.get(k) for k in key} == key and saved.get("percentile") == OOD_PERCENTILE
                and saved.get("score") == run.method.ood_score_name and isinstance(saved.get("threshold"), float)):
            run.ood = saved
            return saved
    cfg = run.config
    data = load_split(cfg.dataset, "train", data_root or cfg.data_root, log=log)
    idx = _split_indices(run)
    which = "validation" if len(idx["validation"]) else "labelled"
    x = data.images[torch.as_tensor(idx[which], dtype=torch.long)].float().div(255)
    scores = run.ood_scores(x)
    cal = {**key, "score": run.method.ood_score_name, "higher_means": "more like the training data",
           "percentile": OOD_PERCENTILE, "threshold": calibrate_threshold(scores, OOD_PERCENTILE),
           "calibrated_on": f"{which} split of the training set", "n": len(scores), "scores": summary(scores)}
    run.ood = cal
    if write:
        try:
            atomic_write_json(path, cal)
        except OSError as e:
            log(f"note: could not write {path} ({e.strerror or e}); keeping the calibration in memory")
    return cal


def _as_run(run: Run | str | Path, device: str = "cpu") -> Run:
    return run if isinstance(run, Run) else load_run(run, device=device)


def evaluate(run: Run | str | Path, split: str = "test", data_root: str | None = None, write: bool = True,
             log=print, ood: list[str] | tuple[str, ...] = ()) -> dict:
    """Error on the test set (or the saved validation split); writes eval.json and confusion.png.

    ``ood``: other data (``"fashion-mnist"``, ``"noise"``, a dataset name) to measure the AUROC of
    the out-of-distribution score against; results go under ``report["ood"][name]``.
    """
    if ood:
        from gencls.evaluation.ood import check_ood_names
        check_ood_names(ood)
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
    x = x.float().div(255)
    logits = run.logits(x)
    report = {"split": split, "method": cfg.method, "dataset": cfg.dataset, "labels": cfg.labels,
              "checkpoint_epoch": run.meta.get("epoch"), "val_error": run.meta.get("val_error"),
              **classification_report(y, logits, run.classes)}
    name = "eval.json" if split == "test" else f"eval_{split}.json"
    write = write and run.path is not None
    if ood:
        report["ood"] = _previous_ood(run.path / name, report) if write else {}
        report["ood"].update(evaluate_ood(run, x, ood, data_root=root, log=log))
    if write:
        from gencls.evaluation.plots import plot_confusion

        if not ood:
            prev = _previous_ood(run.path / name, report)
            if prev:
                report["ood"] = prev
        atomic_write_json(run.path / name, report)
        plot_confusion(report["confusion_matrix"], run.classes,
                       run.path / ("confusion.png" if split == "test" else f"confusion_{split}.png"),
                       title=f"{cfg.method}, {split} error {report['error_percent']:.2f}%")
    return report


def _previous_ood(path: Path, report: dict) -> dict:
    """OOD results already in an eval file for the same checkpoint (kept when another is added)."""
    try:
        old = read_json(path) if path.exists() else {}
    except GenclsError:
        return {}
    if old.get("checkpoint_epoch") != report["checkpoint_epoch"] or old.get("split") != report["split"]:
        return {}
    return dict(old.get("ood") or {})


def evaluate_ood(run: Run | str | Path, x_in: torch.Tensor, against: list[str] | tuple[str, ...],
                 data_root: str | None = None, log=print) -> dict[str, dict]:
    """AUROC (and FPR at 95% TPR, flagged fractions) of the OOD score: ``x_in`` vs each other set."""
    from gencls.evaluation.metrics import auroc, fpr_at_tpr
    from gencls.evaluation.ood import ood_images

    run = _as_run(run)
    cal = ood_calibration(run, data_root=data_root, log=log)
    s_in = run.ood_scores(x_in)
    out = {}
    for name in against:
        s_out = run.ood_scores(ood_images(name, run.image_shape, data_root, log=log))
        out[name] = {"auroc": auroc(s_in, s_out), "fpr_at_95_tpr": fpr_at_tpr(s_in, s_out, 0.95),
                     "n_in": len(s_in), "n_out": len(s_out), "score": cal["score"], "threshold": cal["threshold"],
                     "flagged_in": float((s_in < cal["threshold"]).float().mean()),
                     "flagged_out": float((s_out < cal["threshold"]).float().mean())}
    return out


def _split_indices(run: Run) -> dict:
    d = read_json(run.path / "split.json")
    if d.get("subset") is not None:  # indices are into the subset
        sub = d["subset"]
        d = {**d, "validation": [sub[i] for i in d["validation"]], "labelled": [sub[i] for i in d["labelled"]]}
    return d


def predict(run: Run | str | Path, paths: list[str | Path], top_k: int = 3, invert: str = "auto",
            batch_size: int = 256) -> list[Prediction]:
    """Classify image files and folders; an unreadable file gets ``error`` and the others go on."""
    run = _as_run(run)
    files = find_images(paths)
    results: list[Prediction] = []
    background = run.background
    if files:
        ood_calibration(run)
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
            for slot, row in zip(slots, run.analyse(torch.stack(tensors), top_k)):
                r = results[slot]
                r.top_k = [(t["class"], t["probability"]) for t in row["top_k"]]
                r.label, r.probability = r.top_k[0]
                r.ood_score, r.ood_flag = row["ood_score"], row["ood_flag"]
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


def generate_class(run: Run | str | Path, label: str | int, n: int = 8, seed: int | None = None,
                   max_draws: int = 4096, batch: int = 256) -> tuple[torch.Tensor, dict[str, Any]]:
    """``n`` generated images of one class (up to ``n`` for unconditional generators).

    A class-conditional method generates the class directly ("conditional"). An unconditional
    generator draws samples and keeps those the run's own classifier assigns to the class
    ("filtered by the classifier"), at most ``max_draws`` draws, so fewer than ``n`` may come back.
    Returns the images and how they were made.
    """
    run = _as_run(run)
    if isinstance(label, str):
        if label not in run.classes:
            raise InputError(f"unknown class {label!r} (classes: {', '.join(run.classes)})")
        index = run.classes.index(label)
    else:
        index = int(label)
        if not 0 <= index < len(run.classes):
            raise InputError(f"class index {index} out of range 0..{len(run.classes) - 1}")
    if n < 1:
        raise GenclsError(f"n {n}: must be at least 1")
    if not run.method.can_generate:
        from gencls.methods import CannotGenerate
        raise CannotGenerate(f"method {run.method.name} cannot generate images")
    gen = torch.Generator(device=run.device)
    gen.manual_seed(seed if seed is not None else torch.seed())
    if run.method.can_condition:
        labels = torch.full((n,), index, dtype=torch.long, device=run.device)
        return run.method.generate(n, labels=labels, generator=gen).cpu(), {
            "class": run.classes[index], "how": "conditional", "drawn": n, "kept": n}
    kept, drawn = [], 0
    with torch.no_grad():
        while sum(len(k) for k in kept) < n and drawn < max_draws:
            x = run.method.generate(min(batch, max_draws - drawn), generator=gen)
            drawn += len(x)
            kept.append(x[run.method.classify(x).argmax(1) == index].cpu())
    images = torch.cat(kept)[:n]
    return images, {"class": run.classes[index], "how": "filtered by the classifier", "drawn": drawn,
                    "kept": len(images)}
