"""The training loop. It knows methods only through the registry and the method contract.

Crash safety: checkpoints are written atomically (``best`` first, then ``last``, which is the
commit point), every epoch and every ``checkpoint_every`` steps. A checkpoint taken inside an
epoch records the position in the epoch and the partial loss sums, and the batch order of an
epoch is a pure function of (seed, epoch), so ``--resume`` after a kill continues with exactly
the numbers an uninterrupted run would have produced (on the same device and thread count).
SIGINT/SIGTERM stop after the current step with a checkpoint.

Under ``torchrun`` the same loop trains data-parallel (see ``gencls.training.distributed``): each
process trains on its slice of every batch, rank 0 alone validates, logs and writes.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from gencls.config import TrainConfig
from gencls.data import make_split
from gencls.data.datasets import load_run_split
from gencls.data.images import border_mean
from gencls.errors import GenclsError, TrainingStopped  # noqa: F401  (TrainingStopped re-exported)
from gencls.evaluation.metrics import predict_logits
from gencls.methods import NonFiniteError, create_method
from gencls.training import distributed
from gencls.training.checkpoint import checkpoint_bytes_estimate, parse_checkpoint, save_checkpoint, validate_modules
from gencls.training.runlog import RunLog, save_grid
from gencls.utils import atomic_write_json, read_json

# Settings a resumed run may change; everything else comes from the run's config.json.
RESUMABLE_OVERRIDES = ("epochs", "minutes", "progress", "sample_every", "tensorboard", "checkpoint_every",
                       "keep", "on_nan", "max_grad_norm")
HOW_TO_RUN = ("device", "threads", "precision", "compile", "cuda_graphs")
INIT_BATCH = 500  # images for the data-dependent initialisation
EVAL_BATCH = 1000
LOG_EVERY = 50  # steps between progress updates (the only host syncs inside an epoch)
SAMPLE_SEED = 12345


def _looks_like_run(folder: Path) -> bool:
    return (folder / "config.json").exists() or (folder / "checkpoints").is_dir()


def _check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GenclsError(f"--out {out}: exists and is not a folder")
    if resume:
        if not (out / "checkpoints" / "last.safetensors").exists():
            raise GenclsError(f"--resume: {out} has no checkpoint to resume from (checkpoints/last.safetensors missing)")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise GenclsError(f"--out {out}: the run folder exists and is not empty "
                              "(use --resume to continue it or --overwrite to start again)")
        if not _looks_like_run(out):
            raise GenclsError(f"--out {out}: --overwrite only replaces a gencls run folder, and this one is not")


def _make_run_dir(out: Path, overwrite: bool, need_bytes: int) -> None:
    if overwrite and out.exists() and _looks_like_run(out):
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise GenclsError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise GenclsError(f"--out {out}: {free / 2**20:.0f} MiB free, checkpoints need about "
                          f"{need_bytes / 2**20:.0f} MiB; free some space or choose another folder")


def _resolve_config(config: TrainConfig | dict, resume: bool) -> TrainConfig:
    """The run's configuration. On resume, the saved config.json wins, except RESUMABLE_OVERRIDES
    given explicitly (a dict holds only what the user gave; a TrainConfig gives them all)."""
    if not resume:
        return (TrainConfig.from_dict(config) if isinstance(config, dict) else replace(config)).validate()
    given = dict(config) if isinstance(config, dict) else {k: getattr(config, k) for k in ("out", *RESUMABLE_OVERRIDES)}
    if "out" not in given:
        raise GenclsError("--resume needs --out RUN")
    out = Path(given["out"])
    _check_out_dir(out, resume=True, overwrite=False)
    saved = TrainConfig.from_dict(read_json(out / "config.json"))
    ignored = sorted(k for k, v in given.items() if k not in ("out", *RESUMABLE_OVERRIDES, *HOW_TO_RUN)
                     and v is not None and v != getattr(saved, k, v))
    if ignored:
        raise GenclsError(f"--resume: {', '.join(ignored)} cannot change in a resumed run "
                          f"(they are fixed by {out / 'config.json'})")
    overrides = {k: v for k, v in given.items() if k in RESUMABLE_OVERRIDES and v is not None}
    cfg = replace(saved, out=str(out), **overrides)
    for k in HOW_TO_RUN:  # where and how to run may change; the numbers then may differ slightly
        if given.get(k) is not None:
            setattr(cfg, k, given[k])
    return cfg.validate()


def _subset_indices(n: int, subset: int | None, data_seed: int) -> torch.Tensor | None:
    if subset is None or subset >= n:
        return None
    gen = torch.Generator().manual_seed(int(data_seed) + 7919)
    return torch.randperm(n, generator=gen)[:subset].sort().values


def _epoch_batches(split, iters: int, batch: int, streams: int, seed: int, epoch: int, rank: int = 0, world: int = 1):
    """Index tensors (iters, batch) for one epoch, fixed by (seed, epoch) so a resume draws the same.

    With ``world`` data-parallel processes the epoch is drawn for the global batch ``batch * world``
    (the single-process epoch of that batch) and process ``rank`` takes slice ``rank`` of each."""
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + epoch) % (2**63))
    total = iters * batch * world
    unl = [split.unlabelled[torch.randperm(len(split.unlabelled), generator=gen)[:total]].view(iters, world, batch)[:, rank]
           for _ in range(streams)]
    n_lab = len(split.labelled)
    reps = math.ceil(total / n_lab)
    lab = torch.cat([split.labelled[torch.randperm(n_lab, generator=gen)] for _ in range(reps)])[:total]
    return lab.view(iters, world, batch)[:, rank].contiguous(), (torch.cat(unl, dim=1) if streams else None)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def error_rate(method, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Classification error, or None when there is nothing to evaluate."""
    if len(y) == 0:
        return None
    return float((predict_logits(method, x, EVAL_BATCH).argmax(1) != y).float().mean())


class _GraphedStep:
    """The training step captured once as a CUDA graph and replayed (``--cuda-graphs``).

    The batch indices are copied into static index tensors that the graph gathers from the
    dataset on the device; the returned loss tensors are the graph's static outputs (consume
    them before the next call). A few eager warm-up steps on a side stream first (they are real
    steps: they create the optimizer state and the preallocated buffers), as PyTorch requires.
    """

    WARMUP = 3

    def __init__(self, method, x_all, y_all, autocast):
        self.method, self.x_all, self.y_all, self.autocast = method, x_all, y_all, autocast
        self.graph, self.calls = None, 0

    def _step(self, li, ui):
        with self.autocast():
            return self.method.train_step(self.x_all[li], self.y_all[li], None if ui is None else self.x_all[ui])

    def __call__(self, li, ui):
        self.calls += 1
        if self.calls <= self.WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._step(li, ui)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self.li, self.ui = li.clone(), None if ui is None else ui.clone()
            for opt in self.method.optimizers().values():
                for g in opt.param_groups:
                    g["capturable"] = True
            for opt in self.method.optimizers().values():
                opt.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph):
                    self.out = self._step(self.li, self.ui)
            except Exception as e:  # noqa: BLE001 -- any capture failure means: not capturable
                raise GenclsError(f"--cuda-graphs: the training step of method {self.method.name} cannot be "
                                  f"captured as a CUDA graph ({type(e).__name__}: {str(e).splitlines()[0]}); "
                                  "run without --cuda-graphs") from None
        self.li.copy_(li)
        if ui is not None:
            self.ui.copy_(ui)
        self.graph.replay()
        return self.out


class _StopSignals:
    """SIGINT/SIGTERM set a flag that the loop checks after each step; a second one interrupts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def train(config: TrainConfig | dict, resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] = print,
          on_epoch_end: Callable[[dict, object], None] | None = None) -> Path:
    """Train a method as configured; returns the run folder.

    With ``resume=True``, ``config`` may be a dict holding only ``out`` and the settings to change
    (see ``RESUMABLE_OVERRIDES``). ``on_epoch_end(record, method)`` is called after each epoch's
    metrics are written (used by benchmarks).

    Run by ``torchrun`` it trains data-parallel over the processes (``--batch-size`` per process);
    rank 0 alone logs, validates, writes the run folder and calls ``on_epoch_end``.
    """
    with distributed.process_group() as ddp:
        return _train(ddp, config, resume, overwrite, log if ddp.is_main else (lambda s: None), on_epoch_end)


def _train(ddp: distributed.Context, config, resume, overwrite, log, on_epoch_end) -> Path:
    def resolved():  # on rank 0 (whose machine holds the run folder), then shared
        cfg = _resolve_config(config, resume)
        _check_out_dir(Path(cfg.out), resume, overwrite)
        return cfg.to_dict()
    cfg = TrainConfig.from_dict(ddp.on_main(resolved)).validate()
    out = Path(cfg.out)
    device = ddp.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = ddp.world

    # everything a user can get wrong is checked before the run folder is touched
    data = ddp.local_main_first(lambda: load_run_split(cfg, "train", log=log))
    images, targets = data.images, data.labels
    sub = _subset_indices(len(targets), cfg.subset, cfg.data_seed)
    if sub is not None:
        images, targets = images[sub], targets[sub]
    cfg.fill_from_data(data.image_shape, data.defaults, len(targets))
    split = make_split(targets, cfg.labels, cfg.val_size, cfg.data_seed, num_classes=len(data.classes))
    if len(split.unlabelled) < cfg.batch_size * world:
        raise GenclsError(f"only {len(split.unlabelled)} training images outside validation, "
                          f"fewer than one batch ({cfg.batch_size}" + (f" x {world} processes)" if world > 1 else ")"))
    torch.manual_seed(cfg.seed)
    method = create_method(cfg.method, cfg.method_config, data.image_shape, len(data.classes)).to(device)
    method.guard.policy, method.guard.max_grad_norm = cfg.on_nan, cfg.max_grad_norm
    method.guard.lazy = True  # checked every LOG_EVERY steps, before checkpoints and at epoch ends
    if cfg.cuda_graphs and device.type != "cuda":
        raise GenclsError(f"--cuda-graphs needs a CUDA device; this run is on {device}")
    if cfg.cuda_graphs and world > 1:
        raise GenclsError("--cuda-graphs cannot be used with several processes: the gradient all-reduce "
                          "runs between the captured steps; leave it out under torchrun")
    if cfg.compile:
        method.compile_networks()
    if cfg.precision == "bf16":
        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    else:
        autocast = contextlib.nullcontext
    if not resume:
        ddp.on_main(lambda: _make_run_dir(out, overwrite, (2 + cfg.keep) * checkpoint_bytes_estimate(method) + 2**20))

    sizes = split.sizes()
    log(f"data: {cfg.dataset} train {len(targets)} images -> labelled {sizes['labelled']}, "
        f"validation {sizes['validation']}, unlabelled {sizes['unlabelled']} (data seed {cfg.data_seed})")
    x_all = images.to(device).float().div_(255)
    y_all = targets.to(device)
    x_val, y_val = x_all[split.validation.to(device)], y_all[split.validation.to(device)]
    meta = {"method": cfg.method, "dataset": cfg.dataset, "classes": data.classes,
            "image_shape": list(data.image_shape), "config": cfg.to_dict(),
            "background": border_mean(images[:1000].float() / 255), "split_sizes": sizes, "world_size": world}
    iters = len(split.unlabelled) // (cfg.batch_size * world)
    streams = method.unlabelled_batches
    split_tensors = {"labelled": split.labelled, "validation": split.validation}
    ck_dir = out / "checkpoints"

    # where to start: a fresh run, or the position of the last checkpoint (possibly mid-epoch)
    epoch, epoch_step, step, best, sums = 1, 0, 0, {"val_error": None, "epoch": 0}, {}
    if resume:
        last = ck_dir / "last.safetensors"
        state, ck = parse_checkpoint(ddp.broadcast_bytes(last.read_bytes() if ddp.is_main else None), last)
        for k, v in split_tensors.items():
            if not torch.equal(state["split"][k], v):
                raise GenclsError(f"--resume: the {k} split recomputed from the data differs from the one in "
                                  f"{last}; the dataset files changed since the run started")
        validate_modules(method, state["method"]["modules"], last)
        method.load_state(state["method"])
        step, best, epoch_step = ck["step"], ck["best"], ck.get("epoch_step", 0)
        ranks_rng = state.get("rng_ranks", {})
        if ddp.rank and ck.get("world_size", 1) == world and str(ddp.rank) in ranks_rng:
            _set_rng_state(ranks_rng[str(ddp.rank)], device)
        else:
            _set_rng_state(state["rng"], device)
            ddp.reseed(cfg.seed + step)
        epoch = ck["epoch"] + 1
        if ck.get("world_size", 1) != world and ck.get("epoch_step", 0):
            raise GenclsError(f"--resume: {last} was written inside epoch {epoch} by {ck.get('world_size', 1)} "
                              f"process(es); resume it with that many (a world size may change at an epoch end)")
        sums = {k: v.to(device).clone() for k, v in state.get("sums", {}).items()}
        method.guard.skipped = ck.get("skipped_steps", 0)
        where = f"epoch {epoch}, step {epoch_step} of {iters}" if epoch_step else f"the end of epoch {ck['epoch']}"
        log(f"resuming {out} from {where} (global step {step})")
    else:
        def write_run_files():
            atomic_write_json(out / "config.json", {**cfg.to_dict(), "world_size": world})
            for name, obj in data.run_files.items():  # e.g. a folder dataset's skipped and held-out files
                atomic_write_json(out / name, obj)
                if isinstance(obj, dict) and obj.get("count"):
                    log(f"data: {obj['count']} file(s) could not be decoded and were skipped: listed in {out / name}")
            atomic_write_json(out / "split.json", {"data_seed": cfg.data_seed,
                                                   "subset": None if sub is None else sub.tolist(),
                                                   "labelled": split.labelled.tolist(),
                                                   "validation": split.validation.tolist()})
        ddp.on_main(write_run_files)
        init_gen = torch.Generator().manual_seed(cfg.seed)
        init_idx = split.unlabelled[torch.randperm(len(split.unlabelled), generator=init_gen)[:INIT_BATCH]]
        method.train()
        method.setup(x_all[init_idx.to(device)])
        ddp.reseed(cfg.seed)
    ddp.broadcast_module(method)  # every process starts from rank 0's weights
    ddp.attach(method)
    log(f"method: {cfg.method} ({method.parameter_count():,} parameters) on {device}, "
        f"{iters} iterations of batch {cfg.batch_size} per epoch, epochs {epoch}..{cfg.epochs}"
        + (f", {world} processes (batch {cfg.batch_size} each, {cfg.batch_size * world} per step)" if world > 1 else ""))

    runlog = (RunLog(out, cfg.tensorboard, truncate_after_epoch=epoch - 1 if resume else None) if ddp.is_main
              else distributed.NoLog())

    def check_guard(bad_steps_ago_base: int) -> None:
        """A lazy divergence check; the failed step is named by its global number and epoch."""
        try:
            method.guard.check()
        except NonFiniteError as e:
            stopped(e, bad_steps_ago_base - getattr(e, "steps_ago", 0))

    def stopped(e: NonFiniteError, bad_step: int):
        raise TrainingStopped(
            f"step {bad_step} (epoch {epoch}): {e}; stopped. The last good checkpoint "
            f"({ck_dir / 'last.safetensors'}) is kept; --on-nan skip skips such batches instead") from None

    def checkpoint(epoch_done: int, at_step: int, sums_now: dict, names: tuple[str, ...] = ("last",),
                   val_error: float | None = None) -> None:
        """Called by every process; rank 0 writes."""
        check_guard(step)  # never save the result of a masked (failed) update
        ddp.average_buffers(method)  # per-process batch-norm statistics (CPU) -> their average
        rngs = ddp.gather_rng(_rng_state(device))
        sums_now = ddp.average(sums_now)
        ddp.on_main(lambda: write_checkpoint(epoch_done, at_step, sums_now, names, val_error, rngs))

    def write_checkpoint(epoch_done, at_step, sums_now, names, val_error, rngs) -> None:
        state = {"method": method.state(), "rng": rngs["0"], "split": split_tensors,
                 "sums": {k: v.detach() for k, v in sums_now.items()}}
        if world > 1:  # the other processes' random streams, for an exact resume
            state["rng_ranks"] = {r: v for r, v in rngs.items() if r != "0"}
        ck_meta = {**meta, "epoch": epoch_done, "epoch_step": at_step, "step": step, "best": best,
                   "val_error": val_error, "skipped_steps": method.guard.skipped}
        try:
            for name in names:  # "last" goes last: it is the commit point
                save_checkpoint(ck_dir / f"{name}.safetensors", state, ck_meta)
        except OSError as e:
            raise TrainingStopped(f"could not write a checkpoint into {ck_dir} ({e.strerror or e}); "
                                  "the previous complete checkpoint is kept") from None

    run_step = _GraphedStep(method, x_all, y_all, autocast) if cfg.cuda_graphs else None
    matmul_precision = torch.get_float32_matmul_precision()
    t_start = time.time()
    try:
        torch.backends.cuda.matmul.allow_tf32 = cfg.precision == "tf32"  # restored at the end
        with _StopSignals() as signals:
            while epoch <= cfg.epochs:
                t0 = time.time()
                lab_idx, unl_idx = _epoch_batches(split, iters, cfg.batch_size, streams, cfg.seed, epoch,
                                                  ddp.rank, world)
                lab_idx = lab_idx.to(device)
                unl_idx = unl_idx.to(device) if streams else None
                method.train()
                bar = tqdm(range(epoch_step, iters), initial=epoch_step, total=iters, desc=f"epoch {epoch}/{cfg.epochs}",
                           disable=not (cfg.progress and ddp.is_main), leave=False, dynamic_ncols=True)
                for i in bar:
                    li = lab_idx[i]
                    try:
                        if run_step is not None:
                            losses = run_step(li, unl_idx[i] if streams else None)
                        else:
                            with autocast():
                                losses = method.train_step(x_all[li], y_all[li], x_all[unl_idx[i]] if streams else None)
                    except NonFiniteError as e:
                        stopped(e, step + 1 - getattr(e, "steps_ago", 0))
                    for k, v in losses.items():  # summed on the device: no host sync per step
                        if k in sums:
                            sums[k].add_(v)
                        else:
                            sums[k] = v.detach().clone()
                    step += 1
                    if (i + 1) % LOG_EVERY == 0 or i + 1 == iters:
                        check_guard(step)
                        bar.set_postfix({k: f"{float(v) / (i + 1):.3f}" for k, v in sums.items()}, refresh=False)
                        runlog.scalars({k: float(v) for k, v in losses.items()}, step)
                    signum = ddp.agree_stop(signals.signum, step)  # all processes stop at the same step
                    if signum is not None and i + 1 < iters:
                        checkpoint(epoch - 1, i + 1, sums)
                        name = signal.Signals(signum).name
                        raise TrainingStopped(f"{name}: stopped after step {step} (epoch {epoch}, {i + 1}/{iters}); "
                                              f"checkpoint written. Continue with `gencls train --resume --out {out}`",
                                              exit_code=130 if signum == signal.SIGINT else 143)
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and i + 1 < iters:
                        checkpoint(epoch - 1, i + 1, sums)
                bar.close()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                train_seconds = time.time() - t0
                sums = ddp.average(sums)  # the epoch's mean losses over all processes
                bad = [k for k, v in sums.items() if not math.isfinite(float(v))]
                if bad:  # a method that does not guard its steps: never checkpoint a diverged model
                    raise TrainingStopped(f"epoch {epoch}: loss term {bad[0]} is not finite; stopped. The last good "
                                          f"checkpoint ({ck_dir / 'last.safetensors'}) is kept")
                ddp.average_buffers(method)
                ddp.check_in_sync(method)
                rngs = ddp.gather_rng(_rng_state(device))

                def end_epoch() -> bool:  # rank 0: validate, log, write; returns whether to stop
                    nonlocal best
                    val_error = error_rate(method, x_val, y_val)
                    is_best = best["val_error"] is None or (val_error is not None and val_error < best["val_error"])
                    if val_error is None:  # no validation set: the latest model is the selected one
                        is_best = True
                    if is_best:
                        best = {"val_error": val_error, "epoch": epoch}
                    record = {"epoch": epoch, "step": step, "val_error": val_error,
                              **{k: float(v) / iters for k, v in sums.items()},
                              "best_val_error": best["val_error"], "skipped_steps": method.guard.skipped,
                              "epoch_seconds": train_seconds,
                              "images_per_second": (iters - epoch_step) * cfg.batch_size * world / max(train_seconds, 1e-9)}
                    try:
                        runlog.epoch(record)
                        names = ("best", "last") if is_best else ("last",)
                        if cfg.keep:
                            names = (f"epoch_{epoch:04d}", *names)
                        write_checkpoint(epoch, 0, {}, names, val_error, rngs)
                        if cfg.keep:
                            for old in sorted(ck_dir.glob("epoch_*.safetensors"))[: -cfg.keep]:
                                old.unlink(missing_ok=True)
                                old.with_suffix(".json").unlink(missing_ok=True)
                        if method.can_generate and cfg.sample_every and epoch % cfg.sample_every == 0:
                            g = torch.Generator(device=device).manual_seed(SAMPLE_SEED)
                            save_grid(method.generate(100, generator=g), out / "samples" / f"epoch_{epoch:03d}.png")
                    except OSError as e:
                        raise TrainingStopped(f"could not write into {out} ({e.strerror or e}); "
                                              "the previous complete checkpoint is kept") from None
                    val_txt = "n/a" if val_error is None else f"{100 * val_error:.2f}%"
                    best_txt = "" if val_error is None else f" (best {100 * best['val_error']:.2f}% at epoch {best['epoch']})"
                    log(f"epoch {epoch}/{cfg.epochs}: val error {val_txt}{best_txt}, "
                        + ", ".join(f"{k} {float(v) / iters:.4f}" for k, v in sums.items())
                        + (f", skipped {method.guard.skipped} steps" if method.guard.skipped else "")
                        + f", {train_seconds:.1f}s")
                    if on_epoch_end is not None:
                        on_epoch_end(record, method)
                    return cfg.minutes is not None and time.time() - t_start > 60 * cfg.minutes

                stop = ddp.on_main(end_epoch)
                epoch, epoch_step, sums = epoch + 1, 0, {}
                if stop and epoch <= cfg.epochs:
                    log(f"stopping after epoch {epoch - 1}: the {cfg.minutes}-minute budget is spent")
                    break
    except KeyboardInterrupt:
        raise TrainingStopped(f"interrupted; finished epochs are saved in {out}. Continue with "
                              f"`gencls train --resume --out {out}`", exit_code=130) from None
    finally:
        runlog.close()
        torch.set_float32_matmul_precision(matmul_precision)
    return out
