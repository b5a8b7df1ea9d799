"""The training loop. It knows methods only through the registry and the method contract."""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from gencls.config import TrainConfig
from gencls.data import load_split, make_split
from gencls.data.images import border_mean
from gencls.errors import GenclsError
from gencls.evaluation.metrics import predict_logits
from gencls.methods import create_method
from gencls.training.checkpoint import load_checkpoint, save_checkpoint
from gencls.training.runlog import RunLog, save_grid
from gencls.utils import atomic_write_json, read_json, resolve_device

# Settings a resumed run may change; everything else comes from the run's config.json.
RESUMABLE_OVERRIDES = ("epochs", "minutes", "device", "progress", "threads", "sample_every", "tensorboard")
INIT_BATCH = 500  # images for the data-dependent initialisation
EVAL_BATCH = 1000


def _prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise GenclsError(f"--out {out}: exists and is not a folder")
    last = out / "checkpoints" / "last.safetensors"
    if resume:
        if not last.exists():
            raise GenclsError(f"--resume: {out} has no checkpoint to resume from ({last} missing)")
        return out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise GenclsError(f"--out {out}: the run folder exists and is not empty "
                              "(use --resume to continue it or --overwrite to start again)")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise GenclsError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return out


def _subset_indices(n: int, subset: int | None, data_seed: int) -> torch.Tensor | None:
    if subset is None or subset >= n:
        return None
    gen = torch.Generator().manual_seed(int(data_seed) + 7919)
    return torch.randperm(n, generator=gen)[:subset].sort().values


def _epoch_batches(split, iters: int, batch: int, streams: int, seed: int, epoch: int):
    """Index tensors (iters, batch) for one epoch, fixed by (seed, epoch) so a resume draws the same."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
    unl = [split.unlabelled[torch.randperm(len(split.unlabelled), generator=gen)[: iters * batch]].view(iters, batch)
           for _ in range(streams)]
    n_lab = len(split.labelled)
    reps = math.ceil(iters * batch / n_lab)
    lab = torch.cat([split.labelled[torch.randperm(n_lab, generator=gen)] for _ in range(reps)])[: iters * batch]
    return lab.view(iters, batch), unl


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def error_rate(method, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(y) == 0:
        return float("nan")
    return float((predict_logits(method, x, EVAL_BATCH).argmax(1) != y).float().mean())


def train(config: TrainConfig | dict, resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] = print,
          on_epoch_end: Callable[[dict, object], None] | None = None) -> Path:
    """Train a method as configured; returns the run folder.

    ``on_epoch_end(record, method)`` is called after each epoch's metrics are written (used by
    benchmarks). Interrupting (Ctrl-C) keeps every finished epoch: resume with ``resume=True``.
    """
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else replace(config)
    cfg.validate()
    out = _prepare_run_dir(cfg, resume, overwrite)
    if resume:
        saved = TrainConfig.from_dict(read_json(out / "config.json"))
        cfg = replace(saved, **{k: getattr(cfg, k) for k in RESUMABLE_OVERRIDES}).validate()
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # data: whole training set in memory, on the device
    data = load_split(cfg.dataset, "train", cfg.data_root, log=log)
    images, targets = data.images, data.labels
    sub = _subset_indices(len(targets), cfg.subset, cfg.data_seed)
    if sub is not None:
        images, targets = images[sub], targets[sub]
    split = make_split(targets, cfg.labels, cfg.val_size, cfg.data_seed, num_classes=len(data.classes))
    if len(split.unlabelled) < cfg.batch_size:
        raise GenclsError(f"only {len(split.unlabelled)} training images outside validation, "
                          f"fewer than one batch ({cfg.batch_size})")
    sizes = split.sizes()
    log(f"data: {cfg.dataset} train {len(targets)} images -> labelled {sizes['labelled']}, "
        f"validation {sizes['validation']}, unlabelled {sizes['unlabelled']} (data seed {cfg.data_seed})")
    x_all = images.to(device).float().div_(255)
    y_all = targets.to(device)
    x_val, y_val = x_all[split.validation.to(device)], y_all[split.validation.to(device)]

    torch.manual_seed(cfg.seed)
    method = create_method(cfg.method, cfg.method_config, data.image_shape, len(data.classes)).to(device)
    meta = {"method": cfg.method, "dataset": cfg.dataset, "classes": data.classes,
            "image_shape": list(data.image_shape), "config": cfg.to_dict(),
            "background": border_mean(images[:1000].float() / 255), "split_sizes": sizes}
    iters = len(split.unlabelled) // cfg.batch_size
    streams = method.unlabelled_batches

    start_epoch, step, best = 0, 0, {"val_error": float("inf"), "epoch": 0}
    if resume:
        state, ck = load_checkpoint(out / "checkpoints" / "last.safetensors")
        method.load_state(state["method"])
        _set_rng_state(state["rng"], device)
        start_epoch, step, best = ck["epoch"], ck["step"], ck["best"]
        log(f"resuming {out} after epoch {start_epoch} (step {step})")
    else:
        atomic_write_json(out / "config.json", cfg.to_dict())
        atomic_write_json(out / "split.json", {"data_seed": cfg.data_seed, "subset": None if sub is None else sub.tolist(),
                                               "labelled": split.labelled.tolist(),
                                               "validation": split.validation.tolist()})
        init_idx = split.unlabelled[torch.randperm(len(split.unlabelled), generator=torch.Generator().manual_seed(cfg.seed))[:INIT_BATCH]]
        method.train()
        method.setup(x_all[init_idx.to(device)])
    log(f"method: {cfg.method} ({method.parameter_count():,} parameters) on {device}, "
        f"{iters} iterations of batch {cfg.batch_size} per epoch, epochs {start_epoch + 1}..{cfg.epochs}")

    runlog = RunLog(out, cfg.tensorboard, truncate_after_epoch=start_epoch if resume else None)
    sample_gen_seed = 12345
    split_tensors = {"labelled": split.labelled, "validation": split.validation}
    t_start = time.time()
    try:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            t0 = time.time()
            lab_idx, unl_idx = _epoch_batches(split, iters, cfg.batch_size, streams, cfg.seed, epoch)
            lab_idx = lab_idx.to(device)
            unl_idx = torch.cat(unl_idx, dim=1).to(device) if streams else None
            method.train()
            sums: dict[str, torch.Tensor] = {}
            bar = tqdm(range(iters), desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress,
                       leave=False, dynamic_ncols=True)
            for i in bar:
                li = lab_idx[i]
                x_unl = x_all[unl_idx[i]] if streams else None
                losses = method.train_step(x_all[li], y_all[li], x_unl)
                for k, v in losses.items():
                    sums[k] = sums[k] + v if k in sums else v.clone()
                step += 1
                if (i + 1) % 50 == 0 or i + 1 == iters:
                    avg = {k: float(v) / (i + 1) for k, v in sums.items()}
                    bar.set_postfix({k: f"{v:.3f}" for k, v in avg.items()}, refresh=False)
                    runlog.scalars({k: float(v) for k, v in losses.items()}, step)
            train_seconds = time.time() - t0
            val_error = error_rate(method, x_val, y_val)
            record = {"epoch": epoch, "step": step, "val_error": val_error,
                      **{k: float(v) / iters for k, v in sums.items()},
                      "epoch_seconds": train_seconds, "images_per_second": iters * cfg.batch_size / train_seconds}
            is_best = val_error < best["val_error"]
            if is_best:
                best = {"val_error": val_error, "epoch": epoch}
            record["best_val_error"] = best["val_error"]
            runlog.epoch(record)
            ck_state = {"method": method.state(), "rng": _rng_state(device), "split": split_tensors}
            ck_meta = {**meta, "epoch": epoch, "step": step, "best": best, "val_error": val_error}
            save_checkpoint(out / "checkpoints" / "last.safetensors", ck_state, ck_meta)
            if is_best:
                save_checkpoint(out / "checkpoints" / "best.safetensors", ck_state, ck_meta)
            if method.can_generate and cfg.sample_every and epoch % cfg.sample_every == 0:
                g = torch.Generator(device=device).manual_seed(sample_gen_seed)
                save_grid(method.generate(100, generator=g), out / "samples" / f"epoch_{epoch:03d}.png")
            log(f"epoch {epoch}/{cfg.epochs}: val error {100 * val_error:.2f}% (best {100 * best['val_error']:.2f}% "
                f"at epoch {best['epoch']}), " + ", ".join(f"{k} {float(v) / iters:.4f}" for k, v in sums.items())
                + f", {train_seconds:.1f}s")
            if on_epoch_end is not None:
                on_epoch_end(record, method)
            if cfg.minutes is not None and time.time() - t_start > 60 * cfg.minutes and epoch < cfg.epochs:
                log(f"stopping after epoch {epoch}: the {cfg.minutes}-minute budget is spent")
                break
    except KeyboardInterrupt:
        log(f"\ninterrupted: finished epochs are saved in {out}; continue with "
            f"`gencls train --resume --out {out}`")
        raise
    finally:
        runlog.close()
    return out

