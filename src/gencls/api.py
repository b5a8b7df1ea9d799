"""The Python API; the CLI is a thin layer over these functions."""
from __future__ import annotations

import re
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gencls.config import TrainConfig
from gencls.data import find_images, load_image
from gencls.data.datasets import load_run_split
from gencls.errors import GenclsError, InputError
from gencls.evaluation.metrics import classification_report, predict_logits
from gencls.methods import CannotGenerate, Method, create_method
from gencls.results import Prediction
from gencls.training.checkpoint import load_checkpoint, validate_modules
from gencls.training.trainer import train as _train
from gencls.utils import atomic_write_json, read_json, resolve_device


def train(config: TrainConfig | dict | None = None, resume: bool = False, overwrite: bool = False,
          on_epoch_end=None, log=print, **kwargs) -> Path:
    """Train; ``gencls.train(method="improved-gan", labels=100, epochs=5, out="runs/x")`` works too.

    ``on_epoch_end(record, method)`` is called after every epoch (metrics record, live method);
    ``log`` receives the progress lines. ``seeds=[1, 2, 3]`` trains several seeds in one process
    (see ``gencls.training.trainer.train``).
    """
    if config is None:  # on resume, keyword settings are only what changes (see RESUMABLE_OVERRIDES)
        config = dict(kwargs) if resume else TrainConfig(**kwargs)
    elif kwargs:
        raise TypeError("pass either a config or keyword settings, not both")
    return _train(config, resume=resume, overwrite=overwrite, on_epoch_end=on_epoch_end, log=log)


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
        """Images as the model takes them: (N, C, H, W) floats in [0, 1]; uint8 (0-255) is divided by
        255; other values (0-255 floats, normalised images, NaN) are refused, not classified."""
        if not isinstance(x, torch.Tensor):
            raise InputError(f"images must be a torch.Tensor (N, C, H, W), not {type(x).__name__}")
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != tuple(self.image_shape):
            raise InputError(f"images of shape {tuple(x.shape[1:])} given; this model takes {tuple(self.image_shape)}")
        if x.dtype == torch.uint8:
            return x.float().div_(255)
        if not x.is_floating_point():
            raise InputError(f"images of dtype {x.dtype}: give floats in [0, 1] (or uint8 pixels, 0-255)")
        if x.numel():
            lo, hi = (float(v) for v in torch.aminmax(x.detach().float()))
            if not (lo >= -1e-3 and hi <= 1 + 1e-3):  # NaN fails too
                raise InputError(f"image values from {lo:g} to {hi:g}: this model takes values in [0, 1] "
                                 "(divide 0-255 pixels by 255; undo any normalisation)")
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


@dataclass
class Ensemble(Run):
    """The seeds of a ``train --seeds`` folder as one classifier (``load_ensemble``): its class
    probabilities are the mean of the seeds', its out-of-distribution score the mean of theirs.
    ``method``, ``config`` and ``meta["background"]`` are the first seed's (the seeds share all
    settings but the seed); ``meta["epoch"]`` lists each seed's checkpoint epoch. It classifies
    (``predict``, ``logits``, ``analyse``); it does not generate, and is evaluated through
    ``evaluate_seeds``."""
    runs: list[Run] = field(default_factory=list)

    def logits(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The log of the mean of the seeds' class probabilities (so ``softmax`` gives that mean)."""
        return self.predict_proba(x, batch_size).clamp_min(1e-30).log()

    def predict_proba(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        return torch.stack([r.predict_proba(x, batch_size) for r in self.runs]).mean(0)

    def ood_scores(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        return torch.stack([r.ood_scores(x, batch_size) for r in self.runs]).mean(0)

    def probabilities_and_scores(self, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        each = [r.probabilities_and_scores(x, batch_size) for r in self.runs]
        return torch.stack([p for p, _ in each]).mean(0), torch.stack([s for _, s in each]).mean(0)


def _seed_runs(path: Path) -> list[str]:
    """The seed folders of a ``train --seeds`` folder, every one trained (else one clear error)."""
    if not is_seeds_folder(path):
        raise InputError(f"{path}: not a folder of several seeds (train --seeds writes OUT/seeds.json)")
    record = read_json(path / "seeds.json")
    names = record.get("runs") or [f"seed-{s}" for s in record.get("seeds", [])]
    missing = [n for n in names if not (path / n / "checkpoints" / "best.safetensors").exists()]
    if missing:
        raise InputError(f"{path}: {', '.join(missing)} not trained yet (no best checkpoint); "
                         f"finish the run with `gencls train --resume --out {path}`")
    return names


def load_ensemble(path: str | Path, device: str = "cpu") -> Ensemble:
    """A ``train --seeds`` folder's seeds (each its best checkpoint) as one ``Ensemble``."""
    path = Path(path)
    runs = [load_run(path / name, device=device) for name in _seed_runs(path)]
    first = runs[0]
    for r in runs[1:]:
        if (r.classes, r.image_shape, r.config.method) != (first.classes, first.image_shape, first.config.method):
            raise InputError(f"{path}: {r.path.name} is not the same model as {first.path.name} "
                             "(classes, image shape or method differ): not one ensemble")
    meta = {"epoch": [r.meta.get("epoch") for r in runs], "step": [r.meta.get("step") for r in runs],
            "seeds": [r.path.name for r in runs], "background": first.background}
    return Ensemble(path, first.method, first.config, first.classes, first.image_shape, meta, runs=runs)


def load_run(path: str | Path, which: str = "best", device: str = "cpu") -> Run:
    """Load a run folder's ``best`` (default) or ``last`` checkpoint, or a checkpoint file."""
    path = Path(path)
    if path.is_file():  # a checkpoint file; results are written into its run folder, if it is in one
        ck_path = path
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    else:
        if not path.exists():
            raise InputError(f"{path}: no such run folder")
        if not re.fullmatch(r"[\w-]+", which):  # no dots: last.next is a pending commit, not a checkpoint
            raise GenclsError(f"checkpoint {which!r}: a checkpoint name such as best, last or epoch_0010")
        ck_path, run_dir = path / "checkpoints" / f"{which}.safetensors", path
        if not ck_path.exists() and (path / "seeds.json").exists():
            runs = [str(path / name) for name in read_json(path / "seeds.json").get("runs", [])]
            raise InputError(f"{path}: holds one run per seed ({', '.join(runs)}); give one of them "
                             "(predict takes the folder: its seeds as one ensemble)")
        if not ck_path.exists():
            have = sorted(p.stem for p in (path / "checkpoints").glob("*.safetensors") if "." not in p.stem)
            if which != "best" and have:
                raise InputError(f"{path}: no checkpoint {which!r} (it has {', '.join(have)})")
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

    run = _as_run(run, ensemble=True)
    if run.ood is not None:
        return run.ood
    key = _checkpoint_key(run)
    uncalibrated = {**key, "score": run.method.ood_score_name, "higher_means": "more like the training data",
                    "percentile": OOD_PERCENTILE, "threshold": None, "calibrated_on": None}
    if run.path is None:  # a bare checkpoint file: no validation split to calibrate on
        run.ood = {**uncalibrated, "note": "no run folder, so no validation split to calibrate on"}
        log("note: a checkpoint file without its run folder has no validation split to calibrate the "
            "out-of-distribution threshold on: OOD scores are given, nothing is flagged")
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
    try:
        data = load_run_split(cfg, "train", data_root, log=log)
    except GenclsError as e:  # a run folder moved to where its training data is not: classify, flag nothing
        log(f"note: no out-of-distribution threshold: the training data to calibrate it on is not here ({e})")
        run.ood = {**uncalibrated, "note": f"training data not available: {e}"}
        return run.ood
    try:
        idx = _split_indices(run, data)
    except DataChanged as e:  # calibrating on other images would set a wrong threshold
        log(f"note: no out-of-distribution threshold: {e}")
        run.ood = {**uncalibrated, "note": str(e)}
        return run.ood
    which = "validation" if len(idx["validation"]) else "labelled"
    x = data.images[torch.as_tensor(idx[which], dtype=torch.long)].float().div(255)
    return calibrate_ood(run, x, which, write=write, log=log)


def calibrate_ood(run: Run, x: torch.Tensor, which: str, write: bool = True, log=print) -> dict[str, Any]:
    """Calibrate the run's out-of-distribution threshold on images ``x`` (float in [0, 1]) of its
    ``which`` split ("validation", or "labelled" without one) and keep it in ``ood.json``. The
    trainer calls it at the end of training with the images it holds, so that a run folder copied
    to a machine without its training data still flags out-of-distribution inputs."""
    from gencls.evaluation.ood import OOD_PERCENTILE, calibrate_threshold, summary

    scores = run.ood_scores(x)
    cal = {**_checkpoint_key(run), "score": run.method.ood_score_name, "higher_means": "more like the training data",
           "percentile": OOD_PERCENTILE, "threshold": calibrate_threshold(scores, OOD_PERCENTILE),
           "calibrated_on": f"{which} split of the training set", "n": len(scores), "scores": summary(scores)}
    run.ood = cal
    if write and run.path is not None:
        path = run.path / "ood.json"
        try:
            atomic_write_json(path, cal)
        except OSError as e:
            log(f"note: could not write {path} ({e.strerror or e}); keeping the calibration in memory")
    return cal


def _as_run(run: Run | str | Path, device: str = "cpu", ensemble: bool = False, what: str = "this") -> Run:
    """``run``, or the run folder at that path loaded; a ``train --seeds`` folder (or an
    ``Ensemble``) only where ``ensemble`` (classifying), else one clear error."""
    if isinstance(run, Ensemble) and not ensemble:
        raise GenclsError(f"{what} takes one run, not an ensemble of seeds: give one seed's folder ({run.path}/seed-S)")
    if isinstance(run, Run):
        return run
    if ensemble and is_seeds_folder(run):
        return load_ensemble(run, device=device)
    return load_run(run, device=device)


def evaluate(run: Run | str | Path, split: str = "test", data_root: str | None = None, write: bool = True,
             log=print, ood: list[str] | tuple[str, ...] = (), generation: bool = False, n: int = 10000,
             seed: int = 0, cas_epochs: int = 5, feature_net=None) -> dict:
    """Error on the test set (or the saved validation split); writes eval.json and confusion.png.

    ``ood``: other data (``"fashion-mnist"``, ``"noise"``, a dataset name) to measure the AUROC of
    the out-of-distribution score against; results go under ``report["ood"][name]``.
    ``generation=True`` adds the generation metrics of ``n`` images generated with ``seed`` (FID,
    KID, classifier score, label consistency, CAS; see ``gencls.evaluation.generation``) under
    ``report["generation"]``, measured with the dataset's feature network (trained on first use),
    or with ``feature_net`` (a ``FeatureNet`` or the path of a file ``prepare_metrics`` made).
    """
    return _evaluate(run, split, data_root, write, log, ood, generation, n, seed, cas_epochs, feature_net)[0]


def _evaluate(run, split="test", data_root=None, write=True, log=print, ood=(), generation=False, n=10000, seed=0,
              cas_epochs=5, feature_net=None):
    """``evaluate``, also returning the logits and labels it computed (``evaluate_seeds`` combines them)."""
    if ood:
        from gencls.evaluation.ood import check_ood_names
        check_ood_names(ood)
    if isinstance(run, Ensemble):
        raise GenclsError(f"evaluate takes one run: evaluate_seeds({str(run.path)!r}) evaluates every seed and "
                          "their ensemble")
    run = _as_run(run)
    if generation:
        if not run.method.can_generate:
            raise CannotGenerate(f"method {run.config.method} cannot generate images: nothing to measure")
        if n < 2:
            raise GenclsError(f"--n {n}: at least 2 generated images are needed for FID")
    cfg = run.config
    root = data_root or cfg.data_root
    if split == "test":
        data = load_run_split(cfg, "test", root, log=log)
        x, y = data.images, data.labels
    elif split == "val":
        if run.path is None:
            raise GenclsError("--split val needs the run folder (its split.json), not a bare checkpoint file")
        data = load_run_split(cfg, "train", root, log=log)
        idx = torch.as_tensor(_split_indices(run, data)["validation"], dtype=torch.long)
        if len(idx) == 0:
            raise GenclsError(f"{run.path}: this run has no validation split (--val-size 0); evaluate the test split")
        x, y = data.images[idx], data.labels[idx]
    else:
        raise GenclsError(f"--split {split}: test or val")
    x = x.float().div(255)
    logits = run.logits(x)
    report = {"split": split, "method": cfg.method, "dataset": cfg.dataset, "labels": cfg.labels,
              "checkpoint_epoch": run.meta.get("epoch"), "checkpoint_step": run.meta.get("step"),
              "val_error": run.meta.get("val_error"),
              **classification_report(y, logits, run.classes)}
    if generation:
        from gencls.evaluation import featurenet
        from gencls.evaluation.generation import generation_report

        # the run's data as it trained on it: its image size and channels, a folder's test rule
        spec = dict(image_size=cfg.image_size, channels=cfg.channels, folder_test_rule=cfg.folder_test_rule)
        if feature_net is None:
            fnet = featurenet.load(cfg.dataset, root, device=run.device, log=log, **spec)
        elif isinstance(feature_net, featurenet.FeatureNet):
            fnet = feature_net
        else:
            fnet = featurenet.load_path(feature_net, device=run.device)
        if fnet.info.get("dataset") != cfg.dataset:
            raise GenclsError(f"the feature network is for {fnet.info.get('dataset')}, the run for {cfg.dataset}")
        if tuple(fnet.info.get("image_shape", ())) != tuple(run.method.image_shape):
            raise GenclsError(f"the feature network takes {'x'.join(map(str, fnet.info.get('image_shape', [])))} "
                              f"images, the run makes {'x'.join(map(str, run.method.image_shape))}")
        report["generation"] = generation_report(run.method, run.classes, fnet, cfg.dataset, root, n=n, seed=seed,
                                                 cas_epochs=cas_epochs, log=log, **spec)
    name = eval_file_name(run, split)
    write = write and run.path is not None
    previous = _previous_eval(run.path / name, report) if write else {}
    if ood:
        report["ood"] = dict(previous.get("ood") or {})
        report["ood"].update(evaluate_ood(run, x, ood, data_root=root, log=log))
    if write:
        from gencls.evaluation.plots import plot_confusion

        # what an earlier call measured of the same checkpoint (OOD sets, generation) is kept
        if not ood and previous.get("ood"):
            report["ood"] = previous["ood"]
        if not generation and previous.get("generation"):
            report["generation"] = previous["generation"]
        try:
            atomic_write_json(run.path / name, report)
            plot_confusion(report["confusion_matrix"], run.classes,
                           run.path / eval_file_name(run, split, "confusion", ".png"),
                           title=f"{cfg.method}, {split} error {report['error_percent']:.2f}%")
        except OSError as e:  # a read-only run folder: the figures are still returned (and printed)
            log(f"note: could not write {run.path / name} ({e.strerror or e}); the results are not saved")
    return report, logits, y


def eval_file_name(run: Run, split: str = "test", stem: str = "eval", suffix: str = ".json") -> str:
    """Where ``evaluate`` writes in the run folder: ``eval.json`` for the best checkpoint on the test
    split, ``eval_val.json`` on the validation split, and e.g. ``eval_last.json`` for another
    checkpoint (so that evaluating ``last`` leaves the best one's results, OOD and generation
    figures included, where report and serve read them)."""
    ck = run.checkpoint.stem if run.checkpoint is not None else "best"
    return stem + ("" if split == "test" else f"_{split}") + ("" if ck == "best" else f"_{ck}") + suffix


def _previous_eval(path: Path, report: dict) -> dict:
    """The eval file already there if it is of the same checkpoint and split (its OOD and generation
    results are kept when the checkpoint is evaluated again), else {}."""
    try:
        old = read_json(path) if path.exists() else {}
    except GenclsError:
        return {}
    if (not isinstance(old, dict) or old.get("checkpoint_epoch") != report["checkpoint_epoch"]
            or old.get("split") != report["split"]
            or old.get("checkpoint_step", report["checkpoint_step"]) != report["checkpoint_step"]):
        return {}
    return old


def evaluate_ood(run: Run | str | Path, x_in: torch.Tensor, against: list[str] | tuple[str, ...],
                 data_root: str | None = None, log=print) -> dict[str, dict]:
    """AUROC (and FPR at 95% TPR, flagged fractions) of the OOD score: ``x_in`` vs each other set."""
    from gencls.evaluation.metrics import auroc, fpr_at_tpr
    from gencls.evaluation.ood import ood_images

    run = _as_run(run, ensemble=True)
    cal = ood_calibration(run, data_root=data_root, log=log)
    t = cal["threshold"]
    s_in = run.ood_scores(x_in)
    out = {}
    for name in against:
        if name == run.config.dataset:
            log(f"note: --ood {name} is this run's own dataset: its images are not out of distribution "
                "(expect an AUROC near 0.5)")
        s_out = run.ood_scores(ood_images(name, run.image_shape, data_root, log=log))
        out[name] = {"auroc": auroc(s_in, s_out), "fpr_at_95_tpr": fpr_at_tpr(s_in, s_out, 0.95),
                     "n_in": len(s_in), "n_out": len(s_out), "score": cal["score"], "threshold": t,
                     "flagged_in": None if t is None else float((s_in < t).float().mean()),
                     "flagged_out": None if t is None else float((s_out < t).float().mean())}
    return out


class DataChanged(GenclsError):
    """The run's folder dataset is not the one it was trained on: split.json's rows point elsewhere."""


def _split_indices(run: Run, data) -> dict:
    """split.json's labelled and validation rows of ``data`` (the run's training split, as loaded
    now); refused when a folder dataset's files changed since training (rows are positions)."""
    d = read_json((run.runs[0] if isinstance(run, Ensemble) else run).path / "split.json")
    saved, now = d.get("fingerprint"), getattr(data, "fingerprint", None)
    if saved is not None and now is not None and saved != now:
        raise DataChanged(f"{run.config.dataset}: the folder's training files changed since this run was trained "
                          f"(added, removed or replaced), so the rows in {run.path / 'split.json'} no longer point "
                          "at its validation images")
    if d.get("subset") is not None:  # indices are into the subset
        sub = d["subset"]
        d = {**d, "validation": [sub[i] for i in d["validation"]], "labelled": [sub[i] for i in d["labelled"]]}
    return d


def predict(run: Run | str | Path, paths: list[str | Path], top_k: int = 3, invert: str = "auto",
            batch_size: int = 256) -> list[Prediction]:
    """Classify image files and folders; an unreadable file gets ``error`` and the others go on."""
    run = _as_run(run, ensemble=True)
    files = find_images(paths)
    results: list[Prediction] = []
    background = run.background
    if files:  # its data messages go to stderr: predict's output may be JSON or CSV
        ood_calibration(run, log=lambda s: print(s, file=sys.stderr))
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


def prepare_metrics(dataset: str = "mnist", data_root: str | None = None, force: bool = False, device: str = "cpu",
                    log=print, image_size=None, channels: int | None = None) -> dict:
    """Train (or find cached) the dataset's feature network for the generation metrics; returns its
    info (path, sha256, test_accuracy, train_seconds, ...). ``image_size`` and ``channels``: as a
    run's ``--image-size`` and ``--channels`` (the network for runs trained so)."""
    from gencls.evaluation import featurenet

    return featurenet.prepare(dataset, data_root, force=force, device=resolve_device(device), log=log,
                              image_size=image_size, channels=channels)


def class_index(run: Run, c: int | str) -> int:
    """A class given by name (``"7"``, ``"cat"``) or by index -> its index. A string is a name first
    (else an index, ``"3"``); a number is an index (class names "1", "10", "2": 1 is "10")."""
    if isinstance(c, str) and c in run.classes:
        return run.classes.index(c)
    try:
        i = int(c)
    except (TypeError, ValueError):
        i = -1
    if 0 <= i < len(run.classes):
        return i
    raise GenclsError(f"--class {c}: unknown class (classes: {', '.join(run.classes)})")


def _labels_tensor(run: Run, labels, n: int) -> torch.Tensor | None:
    if labels is None:
        return None
    if not run.method.can_condition:
        raise CannotGenerate(f"method {run.config.method} cannot generate a chosen class: "
                             + ("its generator is unconditional" if run.method.can_generate else "it has no generator"))
    if isinstance(labels, (int, str)):
        return torch.full((n,), class_index(run, labels), dtype=torch.long)
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    out = torch.tensor([class_index(run, c) for c in labels], dtype=torch.long)
    if len(out) != n:
        raise GenclsError(f"{len(out)} labels given for {n} images")
    return out


def _generator(run: Run, seed: int | None) -> torch.Generator:
    if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**63):
        raise GenclsError(f"--seed {seed}: must be an integer in [0, 2^63)")
    gen = torch.Generator(device=run.device)
    gen.manual_seed(seed if seed is not None else secrets.randbits(63))  # leaves the global RNG alone
    return gen


def generate(run: Run | str | Path, n: int = 100, seed: int | None = None,
             labels: torch.Tensor | list[int | str] | int | str | None = None) -> torch.Tensor:
    """``n`` generated images (N, C, H, W) in [0, 1].

    ``labels``: one class (index or name) for all ``n`` images, or one per image; only for
    class-conditional methods (``CannotGenerate`` otherwise). ``seed`` makes it repeatable.
    """
    run = _as_run(run, what="generate")
    if n < 1:
        raise GenclsError(f"--n {n}: must be at least 1")
    lab = _labels_tensor(run, labels, n)
    gen = _generator(run, seed)
    return run.method.generate(n, labels=None if lab is None else lab.to(run.device), generator=gen).cpu()


def generate_class(run: Run | str | Path, label: str | int, n: int = 8, seed: int | None = None,
                   max_draws: int = 4096, batch: int = 256) -> tuple[torch.Tensor, dict[str, Any]]:
    """``n`` generated images of one class (up to ``n`` for unconditional generators).

    A class-conditional method generates the class directly ("conditional"). An unconditional
    generator draws samples and keeps those the run's own classifier assigns to the class
    ("filtered by the classifier"), at most ``max_draws`` draws, so fewer than ``n`` may come back.
    Returns the images and how they were made.
    """
    run = _as_run(run, what="generate")
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
    gen.manual_seed(seed if seed is not None else secrets.randbits(63))
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


def generate_per_class(run: Run | str | Path, per_class: int = 10, seed: int | None = None
                       ) -> tuple[torch.Tensor, list[str]]:
    """``per_class`` images of every class, class by class: (images (K*per_class, C, H, W), row labels)."""
    run = _as_run(run, what="generate")
    if per_class < 1:
        raise GenclsError(f"--per-class {per_class}: must be at least 1")
    k = len(run.classes)
    labels = torch.arange(k).repeat_interleave(per_class)
    return generate(run, n=k * per_class, seed=seed, labels=labels), list(run.classes)


def interpolate(run: Run | str | Path, rows: int = 10, steps: int = 10, seed: int | None = None
                ) -> tuple[torch.Tensor, list[str] | None]:
    """Rows that walk in ``steps`` equal steps between two random latent points (images (rows*steps, C, H, W)).

    For a class-conditional method row r keeps class r mod K all along (row labels: the class names);
    otherwise the row labels are None.
    """
    run = _as_run(run, what="interpolate")
    if rows < 1 or steps < 2:
        raise GenclsError(f"interpolation needs at least 1 row and 2 steps (got {rows} and {steps})")
    m = run.method
    gen = _generator(run, seed)
    z0, z1 = m.sample_latent(rows, gen), m.sample_latent(rows, gen)
    t = torch.linspace(0, 1, steps, device=z0.device).view(1, steps, *([1] * (z0.ndim - 1)))
    z = (z0.unsqueeze(1) * (1 - t) + z1.unsqueeze(1) * t).flatten(0, 1)
    row_labels = None
    labels = None
    if m.can_condition:
        cls = torch.arange(rows) % len(run.classes)
        labels = cls.repeat_interleave(steps).to(z.device)
        row_labels = [run.classes[i] for i in cls.tolist()]
    return m.decode_latent(z, labels).cpu(), row_labels


def _file_safe(name: str) -> str:
    """A class name as part of a file name: path separators and other awkward characters become "_"."""
    return re.sub(r"[^\w.+-]+", "_", name).strip(".") or "_"


GENERATED_LIST = ".gencls-generated.json"  # what write_images wrote into a folder: the files it may replace


def generated_files(out_dir: str | Path) -> list[Path]:
    """The files an earlier ``write_images`` wrote in ``out_dir`` (listed in its ``.gencls-generated.json``)
    that are still there, sorted. Files it did not write are never among them, whatever their names."""
    out = Path(out_dir)
    try:
        names = read_json(out / GENERATED_LIST)["files"]
    except (GenclsError, KeyError, TypeError):  # no list (or not ours): nothing there is ours
        return []
    safe = {n for n in names if isinstance(n, str) and n == Path(n).name and n.endswith(".png")}
    return sorted(out / n for n in safe if (out / n).is_file())


def check_out_dir(out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse an ``--out-dir`` that is a file, or holds an earlier call's generated images (the new
    ones would mix with them: 50 new and 50 old after ``--n 100`` then ``--n 50``) unless ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GenclsError(f"--out-dir {out}: exists and is not a folder")
    old = generated_files(out) if not overwrite else []
    if old:
        raise GenclsError(f"--out-dir {out}: holds {len(old)} generated image(s) of an earlier call ({old[0].name}, ...); "
                          "--overwrite replaces them, or give another folder")


def write_images(run: Run | str | Path, images: torch.Tensor, out_dir: str | Path,
                 labels: torch.Tensor | list[int | str] | int | str | None = None,
                 overwrite: bool = False) -> list[Path]:
    """One PNG per image in ``out_dir``, named with its class: ``00000_7.png`` for the class it was
    generated as (``labels``: one class index or name per image, or one for all), or
    ``00000_pred-7.png`` (the run's own classifier's prediction) when ``labels`` is None.
    A folder holding an earlier call's images is refused, or with ``overwrite`` they are deleted first:
    only the files an earlier call wrote (listed in the folder's ``.gencls-generated.json``); anything
    else in the folder stays, even if named like these."""
    from torchvision.utils import save_image

    run = _as_run(run, what="write_images")
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if labels is not None:
        if isinstance(labels, (int, str)):
            labels = [labels] * len(images)
        elif isinstance(labels, torch.Tensor):
            labels = labels.flatten().tolist()
        if len(labels) != len(images):
            raise GenclsError(f"{len(labels)} labels given for {len(images)} images: give one per image (or one "
                              "for all; generate_per_class's second value names its grid's rows, one per class)")
        names = [run.classes[class_index(run, c)] for c in labels]
    else:
        names = ["pred-" + c for c in run.predict_classes(images)]
    for old in generated_files(out):
        old.unlink(missing_ok=True)
    # class names may hold "/" (Fashion-MNIST's T-shirt/top)
    paths = [out / f"{i:05d}_{_file_safe(name)}.png" for i, name in enumerate(names[: len(images)])]
    # listed before writing: a call stopped half-way still owns what it wrote
    atomic_write_json(out / GENERATED_LIST, {"files": [p.name for p in paths]})
    for img, p in zip(images, paths):
        save_image(img.float().clamp(0, 1), str(p))
    return paths


def is_seeds_folder(path: str | Path) -> bool:
    """A folder written by ``train --seeds``: one run folder per seed and ``seeds.json``."""
    path = Path(path)
    return path.is_dir() and (path / "seeds.json").is_file() and not (path / "checkpoints").exists()


def _ensemble(path: Path, names: list[str], probs: torch.Tensor, y: torch.Tensor, classes: list[str]) -> dict:
    """The seeds as one classifier (the mean of their class probabilities) on the test split, and
    how many distinct labelled images it rests on: each seed draws its own unless they share a data
    seed, so an ensemble of k seeds may have seen k times the label budget."""
    r = classification_report(y, probs.clamp_min(1e-12).log(), classes)
    drawn = []
    for name in names:
        try:
            d = read_json(path / name / "split.json")
            sub = d.get("subset")
            drawn.append(frozenset(d["labelled"] if sub is None else [sub[i] for i in d["labelled"]]))
        except (GenclsError, KeyError, TypeError, IndexError):  # an old or edited split.json: count unknown
            drawn = None
            break
    return {"error_percent": r["error_percent"], "accuracy": r["accuracy"], "nll": r["nll"], "n": r["n"],
            "seeds": len(names), "combined": "mean of the seeds' class probabilities",
            "labelled_images": None if drawn is None else len(frozenset().union(*drawn)),
            "same_labelled_images": None if drawn is None else len(set(drawn)) == 1}


def describe_ensemble(ens: dict, labels) -> str:
    """One line on ``evaluate_seeds``'s ``"ensemble"``: its error and how many labelled images it
    rests on (``labels``: one seed's budget)."""
    n = ens["labelled_images"]
    if ens["same_labelled_images"]:
        basis = f"every seed trained on the same {n} labelled images"
    elif n is None:
        basis = "labelled images behind it unknown (a seed's split.json is unreadable)"
    else:
        basis = (f"rests on {n} distinct labelled images, not {labels}: each seed drew its own "
                 "(train with --data-seed N for one shared draw)")
    return (f"ensemble of the {ens['seeds']} seeds (mean of their class probabilities): test error "
            f"{ens['error_percent']:.2f}%; {basis}")


def evaluate_seeds(path: str | Path, split: str = "test", data_root: str | None = None, write: bool = True,
                   log=print, device: str = "cpu", **kw) -> dict:
    """Evaluate every seed of a ``train --seeds`` folder (each ``evaluate``, each writing its own
    eval.json) and the mean and sample standard deviation of their errors over the seeds; on the
    test split also the error of the seeds as one ensemble (``"ensemble"``: the mean of their
    class probabilities, and the number of distinct labelled images behind it); writes
    ``OUT/eval.json`` (``eval_val.json``). ``kw``: ``evaluate``'s ``ood``, ``generation``, ...
    (their figures stay in each seed's file)."""
    from gencls.utils import atomic_write_json

    path = Path(path)
    names = _seed_runs(path)
    seeds, errors, probs, labels = {}, [], [], None
    for name in names:
        run = load_run(path / name, device=device)
        report, logits, y = _evaluate(run, split=split, data_root=data_root, write=write, log=log, **kw)
        seeds[name] = {"error_percent": report["error_percent"], "checkpoint_epoch": report["checkpoint_epoch"],
                       "val_error": report["val_error"]}
        errors.append(report["error_percent"])
        if labels is None or torch.equal(labels, y):  # the test split: the same images for every seed
            labels = y
            probs.append(logits.float().softmax(1))
    mean = sum(errors) / len(errors)
    std = (sum((e - mean) ** 2 for e in errors) / (len(errors) - 1)) ** 0.5 if len(errors) > 1 else None
    summary = {"split": split, "method": report["method"], "dataset": report["dataset"], "labels": report["labels"],
               "seeds": seeds, "error_percent": {"mean": mean, "std": std, "n": len(errors)},
               "std": "sample standard deviation over the seeds (n - 1); none for one seed"}
    if split == "test" and len(names) > 1 and len(probs) == len(names):
        summary["ensemble"] = _ensemble(path, names, torch.stack(probs).mean(0), labels, run.classes)
    if write:
        name = "eval.json" if split == "test" else f"eval_{split}.json"
        try:
            atomic_write_json(path / name, summary)
        except OSError as e:
            log(f"note: could not write {path / name} ({e.strerror or e}); the results are not saved")
    return summary
