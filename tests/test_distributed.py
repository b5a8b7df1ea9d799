"""Data-parallel training on CPU with gloo: real ``torchrun`` launches of ``gencls train``, and
the collective step of every registered method in two spawned processes."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gencls
from gencls.data.split import SSLSplit
from gencls.methods import create_method, list_methods
from gencls.nets.layers import BiasOnlyBatchNorm1d
from gencls.training import distributed, train
from gencls.training.checkpoint import load_checkpoint
from gencls.training.runlog import read_metrics
from gencls.training.trainer import _epoch_batches

SRC = Path(gencls.__file__).resolve().parents[1]
SHAPE, K = (1, 28, 28), 10

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def torchrun(args, nproc=2, timeout=180, popen=False, **kw):
    """``torchrun --standalone --nproc_per_node N -m gencls train ARGS`` with 1 thread per process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "gencls", "train", *args]
    if popen:
        return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    return subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=timeout)


def small(out, data_root, **kw):
    """A small supervised MNIST run without noise layers: a step is a deterministic function of its batch.

    The network is small (hidden layers of 128 and 64 units): 2 processes of 25 and 1 of 50 images
    round differently (one matmul over 50 against two of 25 averaged), and with the default 5 layers
    of 1000-250 units some ReLU pre-activation sits within that rounding of 0 every few dozen steps:
    it flips, and Adam turns the flipped gradient into a step of the learning rate's size -- chaos,
    not a different computation (on one machine 40 steps at step 0.0002 agreed to 1.2e-7, on another
    they were 3e-4 apart, and 5e-5 was no cure). With 128-64 units 40 steps agree to 2.4e-7 even at
    step 0.003, while one process with batch 25 ends 0.02 away at 0.001: the test keeps its power."""
    c = dict(method="supervised", labels=500, subset=1200, val_size=200, epochs=2, batch_size=25, seed=3, data_seed=4,
             device="cpu", threads=1, progress=False, tensorboard=False, out=str(out),
             data_root=str(data_root),
             method_config={"input_noise": 0.0, "hidden_noise": 0.0, "lr": 0.001, "hidden": [128, 64]})
    c.update(kw)
    return c


def cli_args(c):
    args = []
    for k, v in c.items():
        if k == "method_config":
            for mk, mv in v.items():
                args += ["--set", f"{mk}={mv}"]
        elif k == "progress":
            args += [] if v else ["--no-progress"]
        elif k == "tensorboard":
            args += [] if v else ["--no-tensorboard"]
        else:
            args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def modules(run):
    return load_checkpoint(Path(run) / "checkpoints" / "last.safetensors")[0]["method"]["modules"]


def test_torchrun_matches_one_process_with_the_doubled_batch(tmp_path, data_root):
    """2 processes x batch 25 with gloo == 1 process x batch 50, up to float rounding; rank 0 alone writes."""
    two = torchrun(cli_args(small(tmp_path / "two", data_root)))
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("done:") == 1  # rank 0 speaks for both
    one = train(gencls.TrainConfig(**small(tmp_path / "one", data_root, batch_size=50)), log=lambda s: None)

    a, b = modules(tmp_path / "two"), modules(one)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (k, (a[k] - b[k]).abs().max())
    ra, rb = read_metrics(tmp_path / "two"), read_metrics(one)
    assert len(ra) == len(rb) == 2  # one line per epoch: only rank 0 logs
    for x, y in zip(ra, rb):
        assert x["step"] == y["step"] == 20 * x["epoch"]  # 1000 unlabelled // (25 x 2)
        assert x["loss_lab"] == pytest.approx(y["loss_lab"], rel=1e-4)
        assert abs(x["val_error"] - y["val_error"]) <= 0.005  # at most one of 200 images
    cfg = (tmp_path / "two" / "config.json").read_text()
    assert '"world_size": 2' in cfg and '"batch_size": 25' in cfg


def test_torchrun_user_error_stops_every_rank_with_its_message(tmp_path, data_root):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("not a run")
    r = torchrun(cli_args(small(tmp_path / "taken", data_root)), timeout=120)
    assert r.returncode != 0
    assert "gencls: error: --out" in r.stderr and "gencls: error: rank 0: --out" in r.stderr, r.stderr
    assert (tmp_path / "taken" / "notes.txt").read_text() == "not a run"


def test_torchrun_sigterm_stops_both_ranks_and_resume_finishes(tmp_path, data_root):
    """improved-gan, 2 processes: SIGTERM to torchrun -> both ranks stop at one step with a checkpoint;
    --resume under torchrun finishes the run like an unbroken one (the trainer checks every epoch that
    the ranks' weights agree)."""
    import signal
    import time

    c = small(tmp_path / "gan", data_root, method="improved-gan", labels=100, subset=1400, checkpoint_every=10,
              method_config={})
    c2 = dict(c, out=str(tmp_path / "stop"), epochs=50)
    proc = torchrun(cli_args(c2), popen=True, start_new_session=True)
    ck = tmp_path / "stop" / "checkpoints" / "last.json"
    t0 = time.time()
    while not ck.exists() and time.time() - t0 < 120:
        time.sleep(0.2)
    assert ck.exists(), "no checkpoint within 120 s"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    stops = re.findall(r"SIGTERM: stopped after step (\d+)", out)
    assert len(stops) == 2 and stops[0] == stops[1], out  # both ranks, at the same step
    meta = load_checkpoint(tmp_path / "stop" / "checkpoints" / "last.safetensors")[1]
    assert meta["world_size"] == 2 and meta["epoch_step"] > 0 and meta["step"] == int(stops[0])
    r = torchrun(["--resume", "--out", str(tmp_path / "stop"), "--epochs", str(meta["epoch"] + 1), "--no-progress",
                  "--threads", "1"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_metrics(tmp_path / "stop")[-1]["epoch"] == meta["epoch"] + 1
    # the resumed run equals an unbroken one: same weights, bit for bit (every rank's random stream is restored)
    whole = torchrun(cli_args(dict(c, out=str(tmp_path / "whole"), epochs=meta["epoch"] + 1)))
    assert whole.returncode == 0, whole.stdout + whole.stderr
    a, b = modules(tmp_path / "stop"), modules(tmp_path / "whole")
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k)  # CPU batch-norm averages: see README


def test_epoch_batches_shard_the_doubled_batch():
    """Rank r's slice of every batch: disjoint unlabelled images whose union is the single-process batch."""
    split = SSLSplit(labelled=torch.arange(0, 30), validation=torch.arange(1000, 1100), unlabelled=torch.arange(0, 1000))
    one_l, one_u = _epoch_batches(split, 9, 100, 2, seed=5, epoch=3)
    parts = [_epoch_batches(split, 9, 50, 2, seed=5, epoch=3, rank=r, world=2) for r in range(2)]
    for i in range(9):
        lab = torch.cat([p[0][i] for p in parts])
        assert torch.equal(lab, one_l[i])
        for s in range(2):  # each unlabelled stream
            unl = torch.cat([p[1][i, 50 * s: 50 * (s + 1)] for p in parts])
            assert torch.equal(unl, one_u[i, 100 * s: 100 * (s + 1)])
    for s in range(2):  # within a stream the ranks' images are disjoint
        assert not (set(parts[0][1][:, 50 * s: 50 * (s + 1)].flatten().tolist())
                    & set(parts[1][1][:, 50 * s: 50 * (s + 1)].flatten().tolist()))
    # the single-process draw is unchanged by the new arguments
    assert torch.equal(_epoch_batches(split, 9, 100, 2, seed=5, epoch=3, rank=0, world=1)[1], one_u)


def test_sync_batchnorm_keeps_parameters_and_keys():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), BiasOnlyBatchNorm1d(6), torch.nn.Linear(6, 3),
                              torch.nn.BatchNorm1d(3))
    params = list(net.parameters())
    keys = list(net.state_dict())
    x = torch.randn(16, 4)
    ref = net(x)
    assert distributed.convert_sync_batchnorm(net) == 2
    assert all(isinstance(net[i], torch.nn.SyncBatchNorm) for i in (1, 3))
    assert list(net.parameters()) == params and all(a is b for a, b in zip(net.parameters(), params))
    assert list(net.state_dict()) == keys
    assert not net[1].weight.requires_grad  # the bias-only layer keeps its constant scale
    torch.testing.assert_close(net(x), ref)  # outside a process group it is plain batch norm


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(m, b, gen):
    x_lab = torch.rand(b, *SHAPE, generator=gen)
    y_lab = torch.randint(0, K, (b,), generator=gen)
    x_unl = torch.rand(b * m.unlabelled_batches, *SHAPE, generator=gen) if m.unlabelled_batches else None
    return x_lab, y_lab, x_unl


def _worker(rank, world, port):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed.process_group() as ddp:
        assert ddp.active and ddp.world == world and ddp.rank == rank

        def same_on_all_ranks(m, what):
            tensors = list(m.state_dict().values())
            for opt in m.optimizers().values():
                tensors += [v for s in opt.state_dict()["state"].values() for v in s.values()
                            if isinstance(v, torch.Tensor)]
            flat = torch.cat([t.detach().double().flatten() for t in tensors])
            parts = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(parts, flat)
            names = [k for k, t in m.state_dict().items() for _ in range(t.numel())]
            diff = (parts[0] != parts[1]).nonzero().flatten().tolist()
            assert not diff, f"{m.name}: ranks differ {what}: {sorted({names[i] if i < len(names) else 'optimizer' for i in diff})[:5]}"

        # (a) every method: different data and noise per rank, identical weights, moments and EMA after
        for name in list_methods():
            torch.manual_seed(0)
            m = create_method(name, {}, SHAPE, K)
            m.train()
            m.setup(torch.rand(64, *SHAPE))
            ddp.reseed(0)
            ddp.broadcast_module(m)
            ddp.attach(m)
            gen = torch.Generator().manual_seed(100 + rank)
            for _ in range(2):
                m.train_step(*_batch(m, 8, gen))
            ddp.average_buffers(m)  # batch-norm running statistics are per rank on CPU (no SyncBatchNorm)
            same_on_all_ranks(m, "after 2 steps")
            ddp.check_in_sync(m)

        # (b) step level: rank r trains on half r of a doubled batch == one process on the whole batch
        def fresh():
            torch.manual_seed(0)
            m = create_method("supervised", {"input_noise": 0.0, "hidden_noise": 0.0}, SHAPE, K)
            m.train()
            m.setup(torch.rand(64, *SHAPE))
            return m
        gen = torch.Generator().manual_seed(7)
        batches = [_batch(fresh(), 2 * 8, gen) for _ in range(3)]
        ref, m = fresh(), fresh()
        ddp.attach(m)
        for x, y, _ in batches:
            ref.train_step(x, y, None)
            m.train_step(x[8 * rank: 8 * (rank + 1)], y[8 * rank: 8 * (rank + 1)], None)
        for (k, a), b in zip(m.state_dict().items(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda s: f"{k}: {s}")

        # the guard decides the same everywhere: a NaN on rank 1 only is skipped by both ranks
        m.guard.policy = "skip"
        before = [t.clone() for t in m.net.state_dict().values()]
        x, y, _ = batches[0]
        x = x[:8].clone()
        if rank == 1:
            x[0, 0, 0, 0] = float("nan")
        m.train_step(x, y[:8], None)
        assert m.guard.skipped == 1
        assert all(torch.equal(a, b) for a, b in zip(before, m.net.state_dict().values()))
        same_on_all_ranks(m, "after a skipped step")
    # every check passed and the group is left: exit as `python -m gencls` does under torchrun, without
    # the interpreter's teardown, where gloo's threads sometimes abort a finished process (SIGABRT)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_every_method_stays_identical_across_two_processes():
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)


def _gloo_threads():
    return [n for n in (Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
            if "gloo" in n]


def _leave_worker(rank, world, port):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    with distributed.process_group() as ddp:
        assert _gloo_threads()
        import torchvision  # noqa: F401  (as the MNIST loader does, inside the group: it imports torch._dynamo)
        ddp.barrier()
    # the group is gone with its threads: none is left to abort the interpreter's teardown
    assert not _gloo_threads(), _gloo_threads()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads from /proc")
def test_leaving_the_group_stops_the_gloo_threads():
    """A module imported inside the group that keeps ``group.WORLD`` (torch.distributed.nn.functional,
    imported by torch._dynamo, imported by torchvision) kept gloo's threads past destroy_process_group:
    they sometimes aborted the process at interpreter teardown (SIGABRT)."""
    mp.spawn(_leave_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_a_non_finite_step_on_one_process_is_seen_in_the_epochs_average():
    """The epoch's loss sums are averaged over the processes before the --on-nan stop check: one
    non-finite step on one of two processes averages to 0.5 and must still count."""
    from gencls.training.trainer import _EpochLosses

    ranks = [_EpochLosses(), _EpochLosses()]
    for i in range(4):
        ranks[0].add({"loss": torch.tensor(1.0)})
        ranks[1].add({"loss": torch.tensor(float("nan") if i == 3 else 1.0)})
    states = [r.state() for r in ranks]
    averaged = {k: (states[0][k] + states[1][k]) / 2 for k in states[0]}  # what Context.average gives
    epoch = _EpochLosses.from_state(averaged, steps=4, device="cpu")
    assert epoch.non_finite() == 1
    assert epoch.means() == {"loss": 1.0}
    assert _EpochLosses.from_state({k: (v + v) / 2 for k, v in states[0].items()}, 4, "cpu").non_finite() == 0
