"""Data-parallel training over several processes, launched by ``torchrun``.

``torchrun --nproc_per_node N -m gencls train ...`` (``--nnodes M`` with a rendezvous for several
machines) starts N processes per machine; ``train`` sees torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``) and joins one process group: NCCL for CUDA
tensors (each process on ``cuda:LOCAL_RANK``), gloo for CPU tensors and for the small control
messages. Outside torchrun nothing here does anything and a run is exactly a single-process run.

What is per process ("rank") and what is shared:

- ``--batch-size`` is per rank: a step trains on ``batch_size * world_size`` images in all.
  Each epoch's batch order is the single-process one for that global batch; rank r takes the
  r-th slice of every global batch (disjoint unlabelled images; the labelled images are drawn
  from the same labelled set, a different draw on every rank). An epoch therefore has
  ``unlabelled // (batch_size * world_size)`` steps.
- Every rank starts from rank 0's weights (broadcast after the data-dependent ``setup``, or after
  loading the checkpoint on resume), and every optimizer step averages the gradients over the
  ranks, so weights, optimizer moments and EMA stay identical; the trainer checks this at every
  epoch end (a fingerprint of every tensor) and stops with an error if they ever differ.
- Random numbers (noise layers, latent samples) differ between ranks (rank r > 0 reseeds from
  (seed, rank)); rank 0 keeps the single-process stream.
- Batch norm: on CUDA every ``BatchNorm`` layer becomes a ``SyncBatchNorm`` (statistics over
  the global batch; same parameters and state-dict keys, so checkpoints stay interchangeable).
  On CPU (gloo) ``SyncBatchNorm`` does not run: each rank normalises with its own batch's
  statistics (batch norm over ``batch_size`` images, as a single process with that batch
  would), and the running averages are averaged over the ranks before every checkpoint.
- Rank 0 alone validates, logs (metrics.jsonl, TensorBoard, progress bar), writes checkpoints
  and sample grids; the other ranks wait for it and learn from it whether to stop. A signal
  (SIGINT/SIGTERM, which torchrun forwards to every rank) stops all ranks at the same step
  with a checkpoint. Resume: rank 0 reads the checkpoint file and broadcasts its bytes, so
  only rank 0's machine needs the run folder.

Why gradients are averaged inside ``Method.optimizer_step`` instead of by ``DistributedDataParallel``
wrappers around the generator and the discriminator (the issue names DDP; this is the same
all-reduce DDP does, placed where the method contract guarantees every update passes):

1. DDP averages gradients from autograd hooks that fire when ``.backward()`` accumulates into
   ``.grad``. improved-gan, acgan and aae update their generator (encoder) with
   ``torch.autograd.grad(loss, gen_params)`` -- so that the discriminator's weights get no
   gradient -- which fires no such hook: DDP would silently leave the generator's gradients
   un-averaged and the ranks would drift apart.
2. DDP prepares its reduction in the wrapper's ``forward``. The methods also run their networks
   through other entry points (``gen.sample_z``, ``enc.forward_all_classes``, ``dec.generate``),
   and issue 7's fused improved-gan step computes the weight-normalised weights once per step and
   runs functional layers -- paths a wrapper never sees.
3. One step runs a network several times for different optimizers (aae updates its encoder
   with three optimizers in one step; improved-gan runs the discriminator three times, one pass
   without gradients, one whose gradients go to the generator only). DDP expects one
   forward/backward pair per reduction and fails ("mark variable ready twice", "expected to have
   finished reduction") or needs ``no_sync``/``static_graph`` tuning per method -- the trainer
   would have to know each method's step, which the contract forbids.

``Method.optimizer_step`` is the single place every registered method (and any future one)
applies an update, so averaging there -- one flattened all-reduce per optimizer step holding
the gradients of that optimizer's parameters and the loss terms its guard checks -- is correct
for every method, costs one collective, and makes the non-finite guard take the same decision on
every rank (a NaN on any rank is a NaN in the average). What it gives up is DDP's overlap of the
all-reduce with the backward pass: for these networks (at most ~2.5 M parameters, 10 MB of
gradients per step) the all-reduce is well under a millisecond on NVLink.

Improved-gan's feature matching is a squared distance between *mean* features of a batch, so it
does not decompose over ranks: each rank matches the means of its own ``batch_size`` images (the
paper's loss on a batch of that size) and the gradients are averaged. It equals a single process
with the doubled batch only for losses that are means over images (the supervised method, the
cross-entropies); the test checks exactly that.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from gencls.errors import GenclsError, TrainingStopped
from gencls.utils import resolve_device

SIGNAL_SYNC_EVERY = 10  # steps between the ranks' agreement on a received stop signal
RANK_SEED_STRIDE = 1_000_003


def under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


class Context:
    """Where this process stands: rank, world size, and the collectives the trainer uses.

    With ``world == 1`` and no process group every method is a cheap no-op, so the trainer
    calls them unconditionally.
    """

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, active: bool = False):
        self.rank, self.world, self.local_rank, self.active = rank, world, local_rank, active

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- devices and seeds -------------------------------------------------------------------
    def device(self, name: str) -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` when CUDA is asked for (or ``auto`` finds it)."""
        device = resolve_device(name)
        if self.active and device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise GenclsError(f"LOCAL_RANK {self.local_rank}: this machine has {torch.cuda.device_count()} "
                                  "CUDA device(s); start at most that many processes per machine")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def reseed(self, seed: int) -> None:
        """Give ranks > 0 their own random stream (noise, latents); rank 0 keeps the single-process one."""
        if self.rank:
            torch.manual_seed((int(seed) + RANK_SEED_STRIDE * self.rank) % 2**63)

    # --- collectives ------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.active:  # a tiny all-reduce over gloo: no device guessing as with NCCL's barrier
            dist.all_reduce(torch.zeros(1))

    def broadcast_bytes(self, blob: bytes | None) -> bytes:
        """Rank 0's ``blob`` on every rank (over gloo, on the CPU)."""
        if not self.active:
            return blob
        n = torch.tensor([len(blob) if self.is_main else 0], dtype=torch.int64)
        dist.broadcast(n, 0)
        buf = (torch.frombuffer(bytearray(blob), dtype=torch.uint8) if self.is_main and n.item()
               else torch.empty(int(n.item()), dtype=torch.uint8))
        if n.item():
            dist.broadcast(buf, 0)
        return bytes(buf.numpy()) if not self.is_main else blob

    def broadcast_json(self, obj: Any = None) -> Any:
        if not self.active:
            return obj
        blob = json.dumps(obj).encode() if self.is_main else None
        return json.loads(self.broadcast_bytes(blob).decode())

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only; every rank gets its JSON-able result, or raises its error.

        The other ranks wait meanwhile; an error on rank 0 (a user mistake, a failed write) is
        raised on every rank as the same kind of error, so all stop together.
        """
        if not self.active:
            return fn()
        outcome, error = None, None
        if self.is_main:
            try:
                outcome = {"ok": fn()}
            except BaseException as e:  # noqa: BLE001  (re-raised below, after the others are told)
                error = e
                outcome = {"error": str(e) or type(e).__name__, "kind": type(e).__name__,
                           "exit_code": getattr(e, "exit_code", 1)}
        outcome = self.broadcast_json(outcome)
        if error is not None:
            raise error
        if "error" in outcome:
            msg = f"rank 0: {outcome['error']}"
            if outcome["kind"] in ("TrainingStopped", "KeyboardInterrupt"):
                raise TrainingStopped(msg, exit_code=outcome["exit_code"])
            raise GenclsError(msg)
        return outcome["ok"]

    def local_main_first(self, fn: Callable[[], Any]) -> Any:
        """``fn`` on each machine's local rank 0 first (e.g. a dataset download), then on the others."""
        if not self.active:
            return fn()
        result, error = None, None
        if self.local_rank == 0:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001  (the others fail the same way on their own)
                error = e
        self.barrier()
        if error is not None:
            raise error
        return result if self.local_rank == 0 else fn()

    def agree_stop(self, signum: int | None, step: int) -> int | None:
        """The stop signal all ranks act on, the same on every rank: checked every ``SIGNAL_SYNC_EVERY`` steps."""
        if not self.active:
            return signum
        if step % SIGNAL_SYNC_EVERY:
            return None
        flag = torch.tensor([signum or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def average(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each scalar tensor averaged over the ranks (a new dict; one all-reduce)."""
        if not self.active or not values:
            return values
        flat = torch.stack([v.detach().float().reshape(()) for v in values.values()])
        dist.all_reduce(flat)
        flat /= self.world
        return dict(zip(values, flat.unbind()))

    def broadcast_module(self, module: nn.Module) -> None:
        """Every parameter and buffer set to rank 0's values (one broadcast per dtype)."""
        if self.active:
            tensors = list(module.parameters()) + list(module.buffers())
            _coalesced(tensors, lambda flat: dist.broadcast(flat, 0))

    def average_buffers(self, module: nn.Module) -> None:
        """Floating-point buffers (batch-norm running statistics) averaged over the ranks."""
        if self.active and self.world > 1:
            buffers = [b for b in module.buffers() if b.is_floating_point()]

            def avg(flat):
                dist.all_reduce(flat)
                flat /= self.world
            _coalesced(buffers, avg)

    def gather_rng(self, state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """Every rank's RNG state, keyed by rank (as strings), on every rank."""
        if not self.active:
            return {"0": state}
        out = {str(r): {} for r in range(self.world)}
        for k in sorted(state):
            t = state[k].cpu().contiguous()
            parts = [torch.empty_like(t) for _ in range(self.world)]
            dist.all_gather(parts, t)
            for r, p in enumerate(parts):
                out[str(r)][k] = p
        return out

    def check_in_sync(self, module: nn.Module) -> None:
        """Raise if any parameter or buffer differs between ranks (compares per-tensor fingerprints)."""
        if not self.active or self.world == 1:
            return
        named = [(n, t) for n, t in module.state_dict().items() if isinstance(t, torch.Tensor)]
        fp = torch.stack([t.detach().double().sum() + (t.detach().double() ** 2).sum() for _, t in named]).cpu()
        lo, hi = fp.clone(), fp.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        diff = (lo != hi) & ~(lo.isnan() & hi.isnan())
        if diff.any():
            name = named[int(diff.nonzero()[0])][0]
            raise TrainingStopped(f"the {self.world} processes no longer hold the same weights ({name} differs); "
                                  "a method updated weights outside Method.optimizer_step")

    # --- the method ---------------------------------------------------------------------------
    def attach(self, method) -> None:
        """Make ``method`` data-parallel: gradients averaged in every ``optimizer_step``, and batch
        norm synchronised on CUDA."""
        if not self.active:
            return
        method.grad_sync = GradientAverager(self.world)
        if method.device.type == "cuda" and self.world > 1:
            convert_sync_batchnorm(method)


class GradientAverager:
    """Called by ``Method.optimizer_step`` before its guard: averages the gradients of the
    optimizer's parameters and the guard's loss terms over the ranks in one all-reduce."""

    def __init__(self, world: int):
        self.world = world

    def __call__(self, optimizer: torch.optim.Optimizer, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads and not terms:
            return terms
        device = grads[0].device if grads else next(iter(terms.values())).device
        vals = [t.detach().float().reshape(1).to(device) for t in terms.values()]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + vals)
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n
        return dict(zip(terms, flat[offset:].unbind()))


def _coalesced(tensors: list[torch.Tensor], op: Callable[[torch.Tensor], None]) -> None:
    """Apply the in-place collective ``op`` to ``tensors``, one flat buffer per (device, dtype)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    seen = set()
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        op(flat)
        offset = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def convert_sync_batchnorm(module: nn.Module) -> int:
    """Replace every batch-norm layer by a ``SyncBatchNorm`` that shares its parameter and buffer
    tensors (the optimizers keep working, the state-dict keys stay the same). Returns the count.

    ``nn.SyncBatchNorm.convert_sync_batchnorm`` would copy parameters into new ones and cannot
    take layers whose scale is a constant buffer (``BiasOnlyBatchNorm1d``)."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats)
                sync._parameters = child._parameters
                sync._buffers = child._buffers
                sync._non_persistent_buffers_set = child._non_persistent_buffers_set
                sync.train(child.training)
                setattr(parent, name, sync)
                count += 1
    return count


@contextlib.contextmanager
def process_group():
    """The process group when run by torchrun (joined here, left at the end or on an error),
    else a single-process ``Context``. A group the caller already joined is used and kept (it
    must take CPU tensors: gloo, or ``"cpu:gloo,cuda:nccl"`` as here); such a caller should import
    ``torch.distributed.nn.functional`` (or torchvision) before ``init_process_group``, as done
    here, or its ``destroy_process_group`` leaves gloo's threads running into interpreter exit."""
    if dist.is_available() and dist.is_initialized():
        yield Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), active=True)
        return
    if not (dist.is_available() and under_torchrun()):
        yield Context()
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    # Before the group exists: torch.distributed.nn.functional takes ``group.WORLD`` as it is at its
    # import as the default argument of its collectives. Imported later (torch._dynamo imports it, and
    # torchvision imports torch._dynamo: the MNIST loader's first ``import torchvision``), those defaults
    # keep the group -- and gloo's worker threads -- alive after destroy_process_group, into interpreter
    # teardown, where a worker still releasing the last collective's tensors needs the GIL the exiting
    # interpreter no longer gives: "terminate called without an active exception" (SIGABRT).
    importlib.import_module("torch.distributed.nn.functional")
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
    ctx = Context(rank, world, local_rank, active=True)
    try:
        yield ctx
        # leave together: rank 0 still calibrates and writes after the last collective, and a process
        # tearing gloo down while its peer is still connected was seen to abort at exit (SIGABRT)
        ctx.barrier()
    finally:
        dist.destroy_process_group()


class NoLog:
    """The run log of ranks > 0: they write nothing."""

    def epoch(self, record: dict) -> None:
        pass

    def scalars(self, values: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass
