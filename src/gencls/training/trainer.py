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

import math
import re
import shutil
import signal
import threading
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from gencls.config import DATA_DERIVED, TrainConfig
from gencls.data import make_split
from gencls.data.split import labelled_positions
from gencls.data.datasets import load_run_split
from gencls.data.images import border_mean
from gencls.errors import GenclsError, TrainingDiverged, TrainingStopped  # noqa: F401  (TrainingStopped re-exported)
from gencls.evaluation.metrics import predict_logits
from gencls.methods import NonFiniteError, create_method
from gencls.training import distributed
from gencls.training.checkpoint import (checkpoint_bytes_estimate, parse_checkpoint, read_checkpoint_meta,
                                       repair_json_copies, save_checkpoint, validate_modules)
from gencls.training.runlog import RunLog, save_grid
from gencls.utils import (LOCK_NAME, FolderLock, atomic_write_json, autocast_for, cpu_has_bf16, read_json,
                          remove_stale_temp_files)

# Settings a resumed run may change; everything else comes from the run's config.json.
RESUMABLE_OVERRIDES = ("epochs", "minutes", "progress", "sample_every", "eval_every", "tensorboard",
                       "checkpoint_every", "keep", "on_nan", "max_grad_norm", "lr_decay")
HOW_TO_RUN = ("device", "threads", "precision", "compile", "cuda_graphs", "stack_seeds")
INIT_BATCH = 500  # images for the data-dependent initialisation
EVAL_BATCH = 1000
LOG_EVERY = 50  # steps between progress updates (the only host syncs inside an epoch)
SAMPLE_SEED = 12345


def _looks_like_run(folder: Path) -> bool:
    return (folder / "config.json").exists() or (folder / "checkpoints").is_dir() or (folder / "seeds.json").exists()


def _resumable(out: Path) -> bool:
    """Whether ``--resume`` finds a checkpoint to continue from in ``out`` (several seeds: in every
    seed's folder, where a seeds run stopped before its first checkpoint has none)."""
    if not (out / "seeds.json").exists():
        return (out / "checkpoints" / "last.safetensors").exists()
    try:
        runs = read_json(out / "seeds.json").get("runs")
    except (GenclsError, AttributeError):
        return False
    cks = [out / str(r) / "checkpoints" for r in runs] if isinstance(runs, list) else []
    return bool(cks) and all((c / "last.safetensors").exists() or (c / f"{PENDING}.safetensors").exists() for c in cks)


def _check_out_dir(out: Path, resume: bool, overwrite: bool, seeds: list[int] | None = None) -> None:
    if out.exists() and not out.is_dir():
        raise GenclsError(f"--out {out}: exists and is not a folder")
    if resume:
        for folder in [out / f"seed-{s}" for s in seeds] if seeds else [out]:
            if not (folder / "checkpoints" / "last.safetensors").exists():
                raise GenclsError(f"--resume: {folder} has no checkpoint to resume from (checkpoints/last.safetensors missing)")
        return
    if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        if not overwrite:
            if not _looks_like_run(out):
                raise GenclsError(f"--out {out}: the folder exists and holds other files (not a gencls run "
                                  "folder); give another --out")
            resumable = _resumable(out)
            raise GenclsError(f"--out {out}: the run folder exists and is not empty ("
                              + ("use --resume to continue it or --overwrite to start again)" if resumable else
                                 "it has no checkpoint to continue from: use --overwrite to start again, or "
                                 "another --out)"))
        if not _looks_like_run(out):
            raise GenclsError(f"--out {out}: --overwrite only replaces a gencls run folder, and this one is not")


def _make_run_dir(out: Path, overwrite: bool, need_bytes: int) -> None:
    if overwrite and out.exists() and _looks_like_run(out):
        for child in out.iterdir():  # all but the lock this process holds (see _lock_run_folder)
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
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
    and HOW_TO_RUN given explicitly: a dict holds only what the user gave; of a TrainConfig, the
    fields that differ from TrainConfig's defaults (its defaults would otherwise undo the run's
    own settings: ``--precision bf16`` back to fp32, ``--eval-every 5`` back to 1)."""
    if not resume:
        return (TrainConfig.from_dict(config, saved=False) if isinstance(config, dict) else replace(config)).validate()
    if isinstance(config, dict):
        given = dict(config)
    else:
        default = {f.name: f.default for f in fields(TrainConfig)}
        given = {"out": config.out, **{k: getattr(config, k) for k in (*RESUMABLE_OVERRIDES, *HOW_TO_RUN)
                                       if getattr(config, k) != default.get(k)}}
    if "out" not in given:
        raise GenclsError("--resume needs --out RUN")
    out = Path(given["out"])
    filled = None  # several seeds: a seed's config.json, with the settings the data filled in (labels, ...)
    if (out / "seeds.json").exists():  # several seeds trained together: their shared configuration
        saved = TrainConfig.from_dict(read_json(out / "seeds.json")["config"])
        if saved.seeds:
            _settle_checkpoints(out, saved.seeds)  # a kill while they checkpointed: all at one point
            if (out / f"seed-{saved.seeds[0]}" / "config.json").exists():
                filled = TrainConfig.from_dict(read_json(out / f"seed-{saved.seeds[0]}" / "config.json"))
    else:
        _settle_seed_alone(out)
        _check_out_dir(out, resume=True, overwrite=False)
        saved = TrainConfig.from_dict(read_json(out / "config.json"))
    _check_out_dir(out, resume=True, overwrite=False, seeds=saved.seeds)
    ignored = sorted(k for k, v in given.items() if k not in ("out", *RESUMABLE_OVERRIDES, *HOW_TO_RUN)
                     and v is not None and not _same_setting(saved, k, v)
                     and not (filled is not None and k not in ("seed", "data_seed", "seeds")
                              and _same_setting(filled, k, v)))
    if ignored:
        raise GenclsError(f"--resume: {', '.join(ignored)} cannot change in a resumed run (they are fixed by "
                          f"{out / ('seeds.json' if saved.seeds is not None else 'config.json')})")
    overrides = {k: v for k, v in given.items() if k in RESUMABLE_OVERRIDES and v is not None}
    cfg = replace(saved, out=str(out), **overrides)
    for k in HOW_TO_RUN:  # where and how to run may change; the numbers then may differ slightly
        if given.get(k) is not None:
            setattr(cfg, k, given[k])
    return cfg.validate()


def _same_setting(saved: TrainConfig, key: str, value) -> bool:
    """Whether ``value`` given for ``key`` is the saved setting, as the command line or the API
    may spell it (``--image-size 28`` is the saved ``[28, 28]``)."""
    if value == getattr(saved, key, value):
        return True
    try:
        return getattr(replace(saved, **{key: value}).validate(), key) == getattr(saved, key)
    except (GenclsError, TypeError, ValueError):
        return False


PENDING = "last.next"  # several seeds: a seed's new "last" checkpoint until every seed has written its own
COMMIT = "checkpoints-commit.json"  # several seeds: present while the seeds' new "last" files replace the old


def _settle_checkpoints(out: Path, seeds: list[int], commit: bool | None = None) -> None:
    """Several seeds checkpoint together: each writes ``last.next``, then OUT/checkpoints-commit.json
    marks that all of them did, the files become ``last`` and the mark goes. After a kill in between,
    every seed ends at the same point: the new one if the mark was written, else the old one."""
    marker = out / COMMIT
    if commit is None:
        commit = marker.exists()
    elif commit:
        atomic_write_json(marker, {"seeds": seeds})
    for s in seeds:
        _settle_one(out / f"seed-{s}" / "checkpoints", commit)
    marker.unlink(missing_ok=True)


def _settle_one(ck: Path, commit: bool) -> None:
    """One seed's part of ``_settle_checkpoints``: ``last.next`` becomes ``last`` (``commit``) or
    goes. Never over a newer ``last``: one written since by the seed folder trained on its own
    (by a gencls from before ``_settle_seed_alone``) is kept, and the stale ``last.next`` dropped."""
    if commit and (ck / f"{PENDING}.safetensors").exists() and (ck / "last.safetensors").exists():
        try:
            commit = read_checkpoint_meta(ck / "last.safetensors")["step"] <= read_checkpoint_meta(
                ck / f"{PENDING}.safetensors")["step"]
        except (GenclsError, KeyError, TypeError):
            pass  # not comparable: the mark decides
    for suffix in (".json", ".safetensors"):  # the .safetensors file last: it is what a resume reads
        pending = ck / f"{PENDING}{suffix}"
        if pending.exists():
            if commit:
                pending.replace(ck / f"last{suffix}")
            else:
                pending.unlink()


def _seeds_parent(out: Path) -> Path | None:
    """OUT when ``out`` is OUT/seed-S, a seed folder of a run of several seeds (OUT/seeds.json lists it)."""
    try:
        runs = read_json(out.parent / "seeds.json").get("runs") if (out.parent / "seeds.json").is_file() else None
    except (GenclsError, AttributeError):
        return None
    return out.parent if isinstance(runs, list) and out.name in runs else None


def _settle_seed_alone(out: Path) -> None:
    """A seed folder resumed on its own (``--resume --out OUT/seed-S``) first settles its part of a
    checkpoint commit of OUT that a kill interrupted, as a resume of OUT would: with OUT's mark its
    ``last.next`` is its newest checkpoint and becomes ``last``; without, it was never committed and
    goes. (Resumed from the older ``last`` instead, its new work would later be replaced by the
    stale ``last.next`` when OUT is resumed.) The other seeds' files and the mark are left to that
    resume of OUT; a trainer of OUT cannot run meanwhile (``_lock_run_folder``)."""
    parent = _seeds_parent(out)
    if parent is not None and (out / "checkpoints" / f"{PENDING}.safetensors").exists():
        _settle_one(out / "checkpoints", commit=(parent / COMMIT).exists())


# files a trainer alone writes in its run folder (temporary files of others', e.g. evaluate's ood.json, only when old)
_TRAINER_FILES = ("config.json", "split.json", "metrics.jsonl", "seeds.json", COMMIT)


def _owned_by_trainer(target: Path) -> bool:
    return target.parent.name in ("checkpoints", "samples") or target.name in _TRAINER_FILES


def _out_of(config, resume: bool) -> Path | None:
    """The run folder ``train`` was given (before its configuration is checked), if any."""
    if isinstance(config, dict):
        out = config.get("out", None if resume else TrainConfig.out)
    else:
        out = getattr(config, "out", None)
    return Path(out) if isinstance(out, (str, Path)) and str(out) else None


def _lock_run_folder(config, resume: bool) -> list[FolderLock]:
    """Lock the run folder for this training (rank 0, before anything reads or changes it): one
    trainer per folder, so two never interleave checkpoints and metrics, and ``--overwrite`` never
    deletes a run another process trains. A seed folder OUT/seed-S trained on its own also holds
    OUT's lock shared: seed folders may train alone side by side, not beside a trainer of OUT.
    Then, under the lock, the temporary files of atomic writes a kill interrupted are removed and
    the checkpoints' .json copies made to say what their .safetensors files hold."""
    out = _out_of(config, resume)
    if out is None:
        return []
    locks: list[FolderLock] = []
    try:
        parent = _seeds_parent(out)
        if parent is not None:
            locks.append(FolderLock(parent, shared=True).acquire())
        locks.append(FolderLock(out).acquire())
        # only a run folder's: --out may be any folder (a home folder, refused a moment later as not
        # empty), and its other programs' temporary files are none of ours to delete
        if locks[-1].fd is not None and _looks_like_run(out):
            try:
                remove_stale_temp_files(out, owned=_owned_by_trainer)
                for ck in (out / "checkpoints", *sorted(out.glob("*/checkpoints"))):  # a seeds run: its seeds'
                    if ck.is_dir():
                        repair_json_copies(ck)  # a .json copy a kill left describing the previous checkpoint
            except OSError:
                pass  # tidying only: a folder that cannot be written fails where the run writes
    except BaseException:
        for lock in reversed(locks):
            lock.release()
        raise
    return locks


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


class _EpochLosses:
    """One run's loss terms over the epoch so far, summed on the device (no host sync per step):
    each term's sum over the steps whose terms were all finite, how many steps those were, and how
    many were not. A step the guard dropped (``--on-nan skip``) returns non-finite terms: it is left
    out of the epoch's means. Added step by step (not summed in blocks), so that a run resumed from
    a checkpoint inside an epoch rounds its sums as an uninterrupted run. As plain values
    (checkpoints, averaging over processes) it is a dict of scalar tensors: the terms' sums plus
    ``_steps`` and ``_non_finite``."""

    def __init__(self):
        self.names: list[str] = []
        self.acc: torch.Tensor | None = None  # [sum per term..., steps counted, steps not finite]

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        vals = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        if self.acc is None:
            self.names, self.acc = list(losses), torch.zeros(len(losses) + 2, device=vals.device)
        elif list(losses) != self.names:  # resumed inside an epoch from a version that logged other terms
            old = dict(zip(self.names, self.acc[:-2].unbind()))
            zero = torch.zeros((), device=vals.device)
            self.names, self.acc = list(losses), torch.stack([*(old.get(k, zero) for k in losses), *self.acc[-2:]])
        ok = torch.isfinite(vals).all()
        self.acc[:-2].add_(torch.where(ok, vals, 0.0))
        self.acc[-2].add_(ok)
        self.acc[-1].add_(~ok)

    def state(self) -> dict[str, torch.Tensor]:
        if self.acc is None:
            return {}
        return {**dict(zip(self.names, self.acc[:-2].unbind())), "_steps": self.acc[-2], "_non_finite": self.acc[-1]}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], steps: int, device) -> "_EpochLosses":
        """From ``state()`` (or an older checkpoint's plain sums over ``steps`` steps)."""
        new = cls()
        names = [k for k in state if not k.startswith("_")]
        if names:
            sums = torch.stack([state[k].float().reshape(()) for k in names]).to(device)
            old_bad = float(~torch.isfinite(sums).all()) if "_steps" not in state else 0.0
            counts = torch.stack([torch.as_tensor(state.get("_steps", steps), dtype=torch.float32),
                                  torch.as_tensor(state.get("_non_finite", old_bad), dtype=torch.float32)])
            new.names, new.acc = names, torch.cat([sums, counts.to(device)])
        return new

    def means(self) -> dict[str, float | None]:
        """Each term's mean over the counted steps (None if no step counted). One host sync."""
        if self.acc is None:
            return {}
        values = self.acc.tolist()
        steps = values[-2]
        return {k: (v / steps if steps else None) for k, v in zip(self.names, values[:-2])}

    def non_finite(self) -> int:
        """Steps with a non-finite term; averaged over processes a fraction, rounded up (one step
        of one process of two is 0.5: not finite, not 0)."""
        return 0 if self.acc is None else math.ceil(float(self.acc[-1]))


class DeviceImages:
    """The training images held on the device as uint8, a quarter of the memory of float32 (on a
    GPU four times the data fits; on the CPU the dataset's own tensor is used, no copy at all).
    Indexing gathers the rows and converts only them to the model input, float32 in [0, 1]: the
    same numbers as converting the whole dataset up front."""

    def __init__(self, images: torch.Tensor, device: torch.device):
        if images.dtype != torch.uint8:
            raise TypeError(f"dataset images must be uint8, not {images.dtype}")
        self.images = images.to(device)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx].float().div_(255)

    def __len__(self) -> int:
        return len(self.images)


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
    (see ``RESUMABLE_OVERRIDES`` and ``HOW_TO_RUN``), or a TrainConfig, of which the fields that
    differ from TrainConfig's defaults change (to set one back to its default, pass a dict). ``on_epoch_end(record, method)`` is called after each epoch's
    metrics are written (used by benchmarks).

    With ``seeds`` (``--seeds 1,2,3``) the seeds train together in one process, each into its own
    complete run folder ``OUT/seed-S`` (evaluate, predict or resume each alone); ``OUT/seeds.json``
    lists them and the returned path is ``OUT``. Seed S draws its own labelled split (data seed S)
    unless ``data_seed`` is given. Methods with a batched step (``Method.stack``) run all seeds as
    one batched model when ``stack_seeds`` is "on" (or "auto" on CUDA); otherwise the seeds' steps
    take turns, each with its own random stream, giving the numbers of separate runs exactly.
    ``on_epoch_end`` is then called once per seed (``record["seed"]``).

    Run by ``torchrun`` it trains data-parallel over the processes (``--batch-size`` per process);
    rank 0 alone logs, validates, writes the run folder and calls ``on_epoch_end``.
    """
    threads = torch.get_num_threads()  # --threads applies to this training only
    locks: list[FolderLock] = []
    try:
        with distributed.process_group() as ddp:
            ddp.on_main(lambda: locks.extend(_lock_run_folder(config, resume)))  # held until the end
            return _train(ddp, config, resume, overwrite, log if ddp.is_main else (lambda s: None), on_epoch_end)
    finally:
        for lock in reversed(locks):
            lock.release()
        torch.set_num_threads(threads)


class _Run:
    """One model's run: its configuration, folder, split, method, log and checkpoints. Under
    ``--seeds`` several runs step together; rank 0 alone validates and writes."""

    def __init__(self, ddp: distributed.Context, cfg: TrainConfig, data, device: torch.device,
                 log: Callable[[str], None], tag: str = ""):
        self.ddp, self.cfg, self.device, self.tag = ddp, cfg, device, tag
        self.log = (lambda text: log(f"{tag}: {text}")) if tag else log
        self.out = Path(cfg.out)
        self.ck_dir = self.out / "checkpoints"
        self.two_phase = False  # several seeds: "last" is written as "last.next", then all seeds commit together
        self.sub = _subset_indices(len(data.labels), cfg.subset, cfg.data_seed)
        targets = data.labels if self.sub is None else data.labels[self.sub]
        self.n_train = len(targets)
        val_default = None  # how the validation size was chosen when not given: said by a split error
        if cfg.val_size is None:
            val_default = ("this dataset's default" if "val_size" in data.defaults
                           else f"10% of the {len(targets)} training images, at most 5000")
        labels_given = cfg.labels is not None
        # the data settings as asked (None: the data's default), kept in config.json beside their
        # resolved values: `train --config RUN/config.json --dataset OTHER` asks for the same again
        self.given = {k: getattr(cfg, k) for k in DATA_DERIVED}
        cfg.fill_from_data(data.image_shape, data.defaults, len(targets))
        chosen = cfg.labels  # a count or "all"; or the --labelled rows, as positions in the images used
        if cfg.labelled is not None:
            chosen = labelled_positions(cfg.labelled, self.sub, len(data.labels))
        try:
            self.split = make_split(targets, chosen, cfg.val_size, cfg.data_seed, num_classes=len(data.classes),
                                    class_names=list(data.classes), val_default=val_default, rows=self.sub)
        except GenclsError as e:
            if labels_given or not str(e).startswith("--labels"):
                raise
            raise GenclsError(f"{e} (--labels {cfg.labels} is this dataset's default: give --labels N, "
                              "or --labels all)") from None
        if len(self.split.unlabelled) < cfg.batch_size * ddp.world:
            raise GenclsError(f"only {len(self.split.unlabelled)} training images outside validation, fewer than "
                              f"one batch ({cfg.batch_size}" + (f" x {ddp.world} processes)" if ddp.world > 1 else ")"))
        torch.manual_seed(cfg.seed)
        self.method = create_method(cfg.method, cfg.method_config, data.image_shape, len(data.classes)).to(device)
        self.guard = self.method.guard
        self.guard.policy, self.guard.max_grad_norm = cfg.on_nan, cfg.max_grad_norm
        self.guard.lazy = True  # checked every LOG_EVERY steps, before checkpoints and at epoch ends
        if cfg.compile:
            self.method.compile_networks()
        self.rng = _rng_state(device)  # the stream as it was after building (setup draws from it)
        self.own_rng = False  # True: this run's stream is swapped in for its steps (seeds taking turns)
        first = data.images[:1000] if self.sub is None else data.images[self.sub[:1000]]
        self.meta = {"method": cfg.method, "dataset": cfg.dataset, "classes": data.classes,
                     "image_shape": list(data.image_shape), "config": cfg.to_dict(),
                     "background": border_mean(first.float() / 255), "split_sizes": self.split.sizes(),
                     "world_size": ddp.world}
        self.split_tensors = {"labelled": self.split.labelled, "validation": self.split.validation}
        self.index = None if self.sub is None else self.sub.to(device)  # split positions -> dataset rows
        self.best, self.losses, self.runlog = {"val_error": None, "epoch": 0}, _EpochLosses(), distributed.NoLog()
        self.data = data

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows of the in-memory dataset for positions in this run's (subset) split."""
        idx = idx.to(self.device)
        return idx if self.index is None else self.index[idx]

    def _check_fingerprint(self) -> None:
        """On resume, a folder dataset must hold the files it held (rows are positions: a file
        added, removed or renamed moves them even where the recomputed split still matches)."""
        fp = getattr(self.data, "fingerprint", None)
        try:
            saved = read_json(self.out / "split.json").get("fingerprint")
        except GenclsError:
            return
        if fp is not None and saved is not None and saved != fp:
            raise GenclsError(f"--resume: the files of {self.cfg.dataset} changed since the run started (added, "
                              "removed, renamed or replaced); train a new run on the folder as it is now")

    def config_record(self, resume: bool) -> dict:
        """config.json: the resolved settings, the world size, and the data settings as asked
        (a resume keeps those of the run's start; a run from before they were kept has none)."""
        given = self.given
        if resume:
            given = read_json(self.out / "config.json").get("given")
        record = {**self.cfg.to_dict(), "world_size": self.ddp.world}
        return record if given is None else {**record, "given": given}

    def need_bytes(self) -> int:
        return (2 + self.cfg.keep) * checkpoint_bytes_estimate(self.method) + 2**20

    def start(self, x_all: "DeviceImages", y_all: torch.Tensor, resume: bool) -> tuple[int, int, int]:
        """Resume from the last checkpoint or initialise; returns (epoch, step within it, global step)."""
        ddp, cfg, method, device = self.ddp, self.cfg, self.method, self.device
        v = self.rows(self.split.validation)
        self.x_val, self.y_val = x_all[v], y_all[v]
        _set_rng_state(self.rng, device)
        if resume:
            last = self.ck_dir / "last.safetensors"
            state, ck = parse_checkpoint(ddp.broadcast_bytes(last.read_bytes() if ddp.is_main else None), last)
            for k, t in self.split_tensors.items():
                if not torch.equal(state["split"][k], t):
                    raise GenclsError(f"--resume: the {k} split recomputed from the data differs from the one in "
                                      f"{last}; the dataset files changed since the run started")
            ddp.on_main(self._check_fingerprint)
            state["method"]["modules"] = validate_modules(method, state["method"]["modules"], last)  # prefixes stripped
            method.load_state(state["method"])
            step, self.best, epoch_step = ck["step"], ck["best"], ck.get("epoch_step", 0)
            world = ddp.world
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
            self.losses = _EpochLosses.from_state(state.get("sums", {}), epoch_step, device)
            self.guard.skipped = ck.get("skipped_steps", 0)
            position = (epoch, epoch_step, step)
            # the settings this resume changed (--epochs, --eval-every, ...) are the run's from now on
            ddp.on_main(lambda: atomic_write_json(self.out / "config.json", self.config_record(resume=True)))
        else:
            def write_run_files():
                atomic_write_json(self.out / "config.json", self.config_record(resume=False))
                for name, obj in self.data.run_files.items():  # e.g. a folder dataset's skipped and held-out files
                    atomic_write_json(self.out / name, obj)
                    if isinstance(obj, dict) and obj.get("count"):
                        self.log(f"data: {obj['count']} file(s) could not be decoded and were skipped: "
                                 f"listed in {self.out / name}")
                atomic_write_json(self.out / "split.json", {"data_seed": cfg.data_seed,
                                                            "subset": None if self.sub is None else self.sub.tolist(),
                                                            "labelled": self.split.labelled.tolist(),
                                                            "validation": self.split.validation.tolist(),
                                                            # a folder's files, to notice when its rows move
                                                            "fingerprint": getattr(self.data, "fingerprint", None)})
            ddp.on_main(write_run_files)
            init_gen = torch.Generator().manual_seed(cfg.seed)
            init_idx = self.split.unlabelled[torch.randperm(len(self.split.unlabelled), generator=init_gen)[:INIT_BATCH]]
            method.train()
            method.setup(x_all[self.rows(init_idx)])
            ddp.reseed(cfg.seed)
            position = (1, 0, 0)
        self.rng = _rng_state(device)
        ddp.broadcast_module(method)  # every process starts from rank 0's weights
        ddp.attach(method)
        return position

    def open_log(self, first_epoch: int, resume: bool) -> None:
        if self.ddp.is_main:
            self.runlog = RunLog(self.out, self.cfg.tensorboard, truncate_after_epoch=first_epoch - 1 if resume else None)

    def rng_state(self) -> dict:
        return self.rng if self.own_rng else _rng_state(self.device)

    def checkpoint(self, epoch_done: int, at_step: int, step: int, sums_now: dict) -> None:
        """A mid-epoch checkpoint; called by every process (run the guard checks first), rank 0 writes."""
        ddp = self.ddp
        ddp.average_buffers(self.method)  # per-process batch-norm statistics (CPU) -> their average
        rngs = ddp.gather_rng(self.rng_state())
        sums_now = ddp.average(sums_now)
        ddp.on_main(lambda: self.write_checkpoint(epoch_done, at_step, step, sums_now, ("last",), None, rngs))

    def write_checkpoint(self, epoch_done, at_step, step, sums_now, names, val_error, rngs) -> None:
        state = {"method": self.method.state(), "rng": rngs["0"], "split": self.split_tensors,
                 "sums": {k: v.detach() for k, v in sums_now.items()}}
        if self.ddp.world > 1:  # the other processes' random streams, for an exact resume
            state["rng_ranks"] = {r: v for r, v in rngs.items() if r != "0"}
        ck_meta = {**self.meta, "epoch": epoch_done, "epoch_step": at_step, "step": step, "best": self.best,
                   "val_error": val_error, "skipped_steps": self.guard.skipped}
        try:
            for name in names:  # "last" goes last: it is the commit point
                if name == "last" and self.two_phase:
                    name = PENDING
                save_checkpoint(self.ck_dir / f"{name}.safetensors", state, ck_meta)
        except OSError as e:
            raise TrainingStopped(f"could not write a checkpoint into {self.ck_dir} ({e.strerror or e}); "
                                  "the previous complete checkpoint is kept") from None

    def end_epoch(self, epoch: int, step: int, iters: int, epoch_step: int, train_seconds: float, rngs: dict,
                  evaluate: bool, final: bool = False) -> dict:
        """Rank 0, after every epoch: the metrics line and the log line; with ``evaluate``, also the
        validation error, the checkpoints (last, best, kept epochs); sample grids every sample_every
        epochs and after the run's ``final`` epoch."""
        cfg, method, out = self.cfg, self.method, self.out
        means = self.losses.means()
        val_error = error_rate(method, self.x_val, self.y_val) if evaluate else None
        is_best = evaluate and (self.best["val_error"] is None
                                or (val_error is not None and val_error < self.best["val_error"]))
        if evaluate and val_error is None:  # no validation set: the latest model is the selected one
            is_best = True
        if is_best:
            self.best = {"val_error": val_error, "epoch": epoch}
        world = self.ddp.world
        record = {"epoch": epoch, "step": step, "val_error": val_error,
                  **means,
                  "best_val_error": self.best["val_error"], "skipped_steps": self.guard.skipped,
                  "epoch_seconds": train_seconds,
                  "images_per_second": (iters - epoch_step) * cfg.batch_size * world / max(train_seconds, 1e-9)}
        if self.tag:
            record["seed"] = cfg.seed
        try:
            self.runlog.epoch(record)
            if evaluate:
                names = ("best", "last") if is_best else ("last",)
                if cfg.keep:
                    names = (f"epoch_{epoch:04d}", *names)
                self.write_checkpoint(epoch, 0, step, {}, names, val_error, rngs)
                if cfg.keep:
                    kept = [p for p in self.ck_dir.glob("epoch_*.safetensors") if re.fullmatch(r"epoch_\d+", p.stem)]
                    for old in sorted(kept, key=lambda p: int(p.stem[6:]))[: -cfg.keep]:  # by number: epoch_10000 last
                        old.unlink(missing_ok=True)
                        old.with_suffix(".json").unlink(missing_ok=True)
            if method.can_generate and cfg.sample_every and (epoch % cfg.sample_every == 0 or final):
                g = torch.Generator(device=self.device).manual_seed(SAMPLE_SEED)
                save_grid(method.generate(100, generator=g), out / "samples" / f"epoch_{epoch:03d}.png")
        except OSError as e:
            raise TrainingStopped(f"could not write into {out} ({e.strerror or e}); "
                                  "the previous complete checkpoint is kept") from None
        if evaluate:
            val_txt = "n/a" if val_error is None else f"{100 * val_error:.2f}%"
            best_txt = ("" if val_error is None
                        else f" (best {100 * self.best['val_error']:.2f}% at epoch {self.best['epoch']})")
        else:
            val_txt, best_txt = f"not measured (--eval-every {cfg.eval_every})", ""
        self.log(f"epoch {epoch}/{cfg.epochs}: val error {val_txt}{best_txt}, "
                 + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in means.items())
                 + (f", skipped {self.guard.skipped} updates" if self.guard.skipped else "")
                 + f", {train_seconds:.1f}s")
        return record


def _kept(runs: list[_Run]) -> str:
    """What a stopped run leaves to resume from."""
    lasts = [r.ck_dir / "last.safetensors" for r in runs]
    if not any(p.exists() for p in lasts):
        return "No checkpoint had been written yet"
    if len(runs) > 1:
        return f"The last good checkpoint of each seed (in {runs[0].out.parent}/seed-S/checkpoints) is kept"
    return f"The last good checkpoint ({lasts[0]}) is kept"


_NO_STACK = ("--stack-seeds on: method {method} has no batched step for several seeds (with these networks); "
             "use --stack-seeds off")


def _stepper(runs: list[_Run], cfg: TrainConfig, device, x_all, y_all, autocast, log):
    """``step(batches) -> [losses per run]`` where ``batches`` holds each run's (labelled,
    unlabelled) dataset rows for the step; and whether the runs are stacked into one model."""
    if len(runs) == 1:
        method = runs[0].method
        if cfg.cuda_graphs:
            graphed = _GraphedStep(method, x_all, y_all, autocast)
            return (lambda batches: [graphed(*batches[0])]), False

        def one(batches):
            li, ui = batches[0]
            with autocast():
                return [method.train_step(x_all[li], y_all[li], None if ui is None else x_all[ui])]
        return one, False

    methods = [r.method for r in runs]
    stack = None
    # auto: stacked on CUDA, unless a learning-rate schedule needs each run's own optimizers
    if cfg.stack_seeds == "on" or (cfg.stack_seeds == "auto" and device.type == "cuda" and not cfg.lr_decay):
        stack = type(methods[0]).stack(methods, runs[0].guard)
        if stack is not None:
            stack.seed_names = [r.tag for r in runs]  # a failed step names its seed
        if stack is None and cfg.stack_seeds == "on":
            raise GenclsError(_NO_STACK.format(method=cfg.method))
    if stack is not None:
        for r in runs:
            r.guard = runs[0].guard  # one guard for the stacked optimizers
        _set_rng_state(runs[0].rng, device)  # one random stream for the stacked model
        log(f"seeds {', '.join(str(r.cfg.seed) for r in runs)}: one batched model ({len(runs)} copies per layer)")

        def stacked(batches):
            li = torch.stack([b[0] for b in batches])
            ui = None if batches[0][1] is None else torch.stack([b[1] for b in batches])
            with autocast():
                losses = stack.train_step(x_all[li], y_all[li], None if ui is None else x_all[ui])
            return [{k: v[s] for k, v in losses.items()} for s in range(len(runs))]
        return stacked, True

    can_stack = type(methods[0]).can_stack(methods)
    log(f"seeds {', '.join(str(r.cfg.seed) for r in runs)}: one step of each in turn, each with its own random stream"
        + (" (--stack-seeds on: one batched model)" if can_stack and cfg.stack_seeds != "off" else ""))
    for r in runs:
        r.own_rng = True

    def in_turn(batches):
        out = []
        for r, (li, ui) in zip(runs, batches):
            _set_rng_state(r.rng, device)
            try:
                with autocast():
                    out.append(r.method.train_step(x_all[li], y_all[li], None if ui is None else x_all[ui]))
            except NonFiniteError as e:
                e.tag = r.tag
                raise
            r.rng = _rng_state(device)
        return out
    return in_turn, False


def _train(ddp: distributed.Context, config, resume, overwrite, log, on_epoch_end) -> Path:
    def resolved():  # on rank 0 (whose machine holds the run folder), then shared
        cfg = _resolve_config(config, resume)
        _check_out_dir(Path(cfg.out), resume, overwrite, cfg.seeds)
        return cfg.to_dict()
    cfg = TrainConfig.from_dict(ddp.on_main(resolved)).validate()
    out = Path(cfg.out)
    device = ddp.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = ddp.world
    if cfg.seeds is not None and world > 1:
        raise GenclsError("--seeds cannot be combined with torchrun: train the seeds data-parallel one after another")
    if cfg.cuda_graphs and device.type != "cuda":
        raise GenclsError(f"--cuda-graphs needs a CUDA device; this run is on {device}")
    if cfg.cuda_graphs and world > 1:
        raise GenclsError("--cuda-graphs cannot be used with several processes: the gradient all-reduce "
                          "runs between the captured steps; leave it out under torchrun")
    if cfg.cuda_graphs and cfg.seeds is not None and len(cfg.seeds) > 1:
        raise GenclsError("--cuda-graphs captures one model's step; leave it out with several --seeds")

    # everything a user can get wrong is checked before the run folder is touched
    data = ddp.local_main_first(lambda: load_run_split(cfg, "train", log=log))
    several = cfg.seeds is not None
    runs = [_Run(ddp, cfg.for_seed(s) if several else cfg, data, device, log, tag=f"seed {s}" if several else "")
            for s in cfg.seed_list]
    for r in runs:
        r.two_phase = several
    if len(runs) > 1 and cfg.stack_seeds == "on" and not type(runs[0].method).can_stack([r.method for r in runs]):
        raise GenclsError(_NO_STACK.format(method=cfg.method))  # before the folder (or its settings) is written
    autocast = autocast_for(device, cfg.precision)
    if not resume:
        need = sum(r.need_bytes() for r in runs)
        ddp.on_main(lambda: _make_run_dir(out, overwrite, need))
        if several:
            for r in runs:
                _make_run_dir(r.out, False, 0)
            atomic_write_json(out / "seeds.json", {"seeds": cfg.seeds, "runs": [r.out.name for r in runs],
                                                   "config": cfg.to_dict()})
    elif several:  # the settings this resume changed are the seeds' from now on
        atomic_write_json(out / "seeds.json", {**read_json(out / "seeds.json"), "config": cfg.to_dict()})

    for r in runs:
        sizes = r.split.sizes()
        chosen = " (the --labelled rows)" if r.cfg.labelled is not None else ""
        r.log(f"data: {cfg.dataset} train {r.n_train} images -> labelled {sizes['labelled']}{chosen}, "
              f"validation {sizes['validation']}, unlabelled {sizes['unlabelled']} (data seed {r.cfg.data_seed})")
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log("note: --precision bf16 on a CPU without bfloat16 support in oneDNN (it needs AVX-512): "
            "its products run in slow generic code, several times slower than the default fp32 here")
    x_all = DeviceImages(data.images, device)
    y_all = data.labels.to(device)
    iters = len(runs[0].split.unlabelled) // (cfg.batch_size * world)
    streams = runs[0].method.unlabelled_batches

    positions = [r.start(x_all, y_all, resume) for r in runs]
    epoch, epoch_step, step = positions[0]
    if any(p != positions[0] for p in positions):
        raise GenclsError("--resume: the seeds' last checkpoints are at different points ("
                          + ", ".join(f"{r.tag} epoch {p[0] - (0 if p[1] else 1)}" + (f" step {p[1]}" if p[1] else "")
                                      for r, p in zip(runs, positions))
                          + "); resume the seed folders one by one (gencls train --resume --out OUT/seed-S)")
    if resume:
        where = f"epoch {epoch}, step {epoch_step} of {iters}" if epoch_step else f"the end of epoch {epoch - 1}"
        log(f"resuming {out} from {where} (global step {step})")
        if epoch > cfg.epochs:
            log(f"nothing to train: the run has finished its {epoch - 1} epochs; --epochs N (more than "
                f"{epoch - 1}) trains on")
    method0 = runs[0].method
    total, trained = method0.parameter_count(), method0.trained_parameter_count()
    log(f"method: {cfg.method} ({total:,} parameters" + (f", {trained:,} of them trained by its optimizers"
                                                         if trained != total else "")
        + (f" per seed, {len(runs)} seed{'s' if len(runs) > 1 else ''}" if several else "") + f") on {device}, "
        f"{iters} iterations of batch {cfg.batch_size} per epoch, epochs {epoch}..{cfg.epochs}"
        + (f", {world} processes (batch {cfg.batch_size} each, {cfg.batch_size * world} per step)" if world > 1 else ""))
    for r in runs:
        r.open_log(epoch, resume)
    run_step, stacked = _stepper(runs, cfg, device, x_all, y_all, autocast, log)
    if stacked and cfg.lr_decay:
        raise GenclsError("--lr-decay schedules each run's own optimizers: not with --stack-seeds on")
    if cfg.lr_decay:
        log(f"learning rate: the method's until epoch {cfg.lr_decay[0]}, then linearly towards 0 at epoch "
            f"{cfg.lr_decay[1]}" + (f" (this run ends at epoch {cfg.epochs})" if cfg.epochs < cfg.lr_decay[1] else ""))

    def stopped(e: NonFiniteError, bad_step: int, tag: str = ""):
        where = f"{tag}: " if tag else ""  # a stacked step's error names its seed
        raise TrainingDiverged(f"{where}step {bad_step} (epoch {epoch}): {e}; stopped. {_kept(runs)}; "
                              "--on-nan skip skips such batches instead") from None

    def check_guards(bad_steps_ago_base: int) -> None:
        """Lazy divergence checks; a failed step is named by its global number and epoch."""
        for r in runs[:1] if stacked else runs:
            try:
                r.guard.check()
            except NonFiniteError as e:
                stopped(e, bad_steps_ago_base - getattr(e, "steps_ago", 0), r.tag if not stacked else "")

    def commit_checkpoints() -> None:
        if several:  # every seed's new "last" checkpoint, or (after a kill) none of them
            _settle_checkpoints(out, cfg.seeds, commit=True)

    def checkpoint_all(at_step: int) -> None:
        check_guards(step)  # never save the result of a masked (failed) update
        for r in runs:
            r.checkpoint(epoch - 1, at_step, step, r.losses.state())
        commit_checkpoints()

    matmul_precision, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    t_start = time.time()
    try:
        # fp32 means fp32 on CUDA too: TF32 products and convolutions only with --precision tf32
        # (PyTorch allows TF32 convolutions by default); both restored at the end
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.precision == "tf32"
        with _StopSignals() as signals:
            while epoch <= cfg.epochs:
                t0 = time.time()
                epoch_batches = []
                for r in runs:
                    lab, unl = _epoch_batches(r.split, iters, cfg.batch_size, streams, r.cfg.seed, epoch, ddp.rank, world)
                    epoch_batches.append((r.rows(lab), r.rows(unl) if streams else None))
                for r in runs:
                    r.method.train()
                    if cfg.lr_decay:
                        _scale_learning_rates(r.method, lr_factor(cfg.lr_decay, epoch))
                bar = tqdm(range(epoch_step, iters), initial=epoch_step, total=iters, desc=f"epoch {epoch}/{cfg.epochs}",
                           disable=not (cfg.progress and ddp.is_main), leave=False, dynamic_ncols=True)
                for i in bar:
                    try:
                        losses = run_step([(lab[i], unl[i] if unl is not None else None) for lab, unl in epoch_batches])
                    except NonFiniteError as e:
                        stopped(e, step + 1 - getattr(e, "steps_ago", 0), getattr(e, "tag", ""))
                    for r, run_losses in zip(runs, losses):
                        r.losses.add(run_losses)  # summed on the device: no host sync per step
                    step += 1
                    if (i + 1) % LOG_EVERY == 0 or i + 1 == iters:
                        check_guards(step)
                        bar.set_postfix({k: "n/a" if v is None else f"{v:.3f}" for k, v in runs[0].losses.means().items()},
                                        refresh=False)
                        for r, run_losses in zip(runs, losses):
                            r.runlog.scalars({k: float(v) for k, v in run_losses.items()}, step)
                    signum = ddp.agree_stop(signals.signum, step)  # all processes stop at the same step
                    if signum is not None and i + 1 < iters:
                        checkpoint_all(i + 1)
                        name = signal.Signals(signum).name
                        raise TrainingStopped(f"{name}: stopped after step {step} (epoch {epoch}, {i + 1}/{iters}); "
                                              f"checkpoint written. Continue with `gencls train --resume --out {out}`",
                                              exit_code=130 if signum == signal.SIGINT else 143)
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and i + 1 < iters:
                        checkpoint_all(i + 1)
                bar.close()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                train_seconds = time.time() - t0
                out_of_time = cfg.minutes is not None and time.time() - t_start > 60 * cfg.minutes
                out_of_time = bool(ddp.broadcast_json(out_of_time))
                signum = ddp.agree_stop(signals.signum, step)  # a signal during the epoch's last step
                final = epoch == cfg.epochs or out_of_time
                evaluate = epoch % cfg.eval_every == 0 or final
                for r in runs:  # every run is checked before any writes
                    # the epoch's mean losses over all processes
                    r.losses = _EpochLosses.from_state(ddp.average(r.losses.state()), iters, device)
                    if cfg.on_nan == "stop" and r.losses.non_finite():
                        # a method that does not guard its steps: never checkpoint a diverged model
                        raise TrainingDiverged(f"{r.tag + ': ' if r.tag else ''}epoch {epoch}: a loss term is not "
                                              f"finite; stopped. {_kept(runs)}")
                for r in runs:
                    ddp.average_buffers(r.method)
                    ddp.check_in_sync(r.method)
                    rngs = ddp.gather_rng(r.rng_state())

                    def end_epoch(r=r, rngs=rngs):
                        record = r.end_epoch(epoch, step, iters, epoch_step, train_seconds, rngs, evaluate, final)
                        if on_epoch_end is not None:
                            on_epoch_end(record, r.method)
                    ddp.on_main(end_epoch)
                commit_checkpoints()
                if signum is not None and not final:
                    if not evaluate:  # no checkpoint at this epoch end yet (--eval-every): the last one only
                        for r in runs:
                            r.checkpoint(epoch, 0, step, {})
                        commit_checkpoints()
                    raise TrainingStopped(f"{signal.Signals(signum).name}: stopped after epoch {epoch} (step {step}); "
                                          f"checkpoint written. Continue with `gencls train --resume --out {out}`",
                                          exit_code=130 if signum == signal.SIGINT else 143)
                epoch, epoch_step = epoch + 1, 0
                for r in runs:
                    r.losses = _EpochLosses()
                if out_of_time and epoch <= cfg.epochs:
                    log(f"stopping after epoch {epoch - 1}: the {cfg.minutes}-minute budget is spent")
                    break
    except KeyboardInterrupt:
        if not any((r.ck_dir / "last.safetensors").exists() for r in runs):  # nothing --resume could read
            raise TrainingStopped(f"interrupted before the first checkpoint: nothing to resume in {out}; "
                                  "start again with --overwrite", exit_code=130) from None
        raise TrainingStopped(f"interrupted; finished epochs are saved in {out}. Continue with "
                              f"`gencls train --resume --out {out}`", exit_code=130) from None
    finally:
        for r in runs:
            r.runlog.close()
        torch.set_float32_matmul_precision(matmul_precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    if ddp.is_main:
        for r in runs:
            _calibrate_ood(r, x_all, log)
    if several:
        _seeds_summary(runs, cfg, out, log)
    return out


def _calibrate_ood(r: "_Run", x_all: "DeviceImages", log) -> None:
    """ood.json for the selected checkpoint, from the images in memory (see ``api.calibrate_ood``)."""
    from gencls.api import calibrate_ood, load_run

    which = "validation" if len(r.split.validation) else "labelled"
    x = r.x_val if which == "validation" else x_all[r.rows(r.split.labelled)]
    try:  # where it trained (a GPU: the conv nets over 5000 images take a moment on a CPU)
        calibrate_ood(load_run(r.out, device=str(r.device)), x, which, log=log)
    except Exception as e:  # noqa: BLE001 - the run is trained and saved; predict calibrates on first use
        log(f"note: out-of-distribution threshold not calibrated ({type(e).__name__}: {e})")


def lr_factor(decay: list[int], epoch: int) -> float:
    """``--lr-decay START END``: the learning rate's factor in (1-based) ``epoch``."""
    start, end = decay
    return min(1.0, max(0.0, (end - (epoch - 1)) / (end - start)))


def _scale_learning_rates(method, factor: float) -> None:
    """Every optimizer's rate = its initial rate x ``factor`` (``initial_lr`` is kept in the param
    group, so it is saved with the optimizer's state and a resumed run scales the same base)."""
    for opt in method.optimizers().values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor


def _seeds_summary(runs: list[_Run], cfg: TrainConfig, out: Path, log) -> None:
    """OUT/seeds.json: each seed's best validation error and epoch, with their mean and std."""
    rows = [{"seed": r.cfg.seed, "data_seed": r.cfg.data_seed, "run": r.out.name,
             "best_val_error": r.best["val_error"], "best_epoch": r.best["epoch"]} for r in runs]
    errs = [row["best_val_error"] for row in rows if row["best_val_error"] is not None]
    summary = {"seeds": [r.cfg.seed for r in runs], "runs": [r.out.name for r in runs],
               "config": cfg.to_dict(), "results": rows}
    if errs:
        t = torch.tensor(errs, dtype=torch.float64) * 100
        summary["best_val_error_percent"] = {"mean": float(t.mean()), "std": float(t.std()) if len(errs) > 1 else 0.0}
        log(f"seeds {', '.join(str(r.cfg.seed) for r in runs)}: best validation error "
            + ", ".join(f"{100 * e:.2f}%" for e in errs)
            + f"; mean {summary['best_val_error_percent']['mean']:.2f} ± {summary['best_val_error_percent']['std']:.2f}%")
    atomic_write_json(out / "seeds.json", summary)
