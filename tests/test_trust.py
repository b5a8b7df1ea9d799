"""Training that survives kills, signals, divergence and full disks."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gencls
from gencls.methods import NonFiniteError, create_method
from gencls.training.runlog import read_metrics
from gencls.training.trainer import TrainingStopped

TIMING = ("epoch_seconds", "images_per_second")
ARGS = ["--method", "improved-gan", "--labels", "100", "--subset", "2000", "--val-size", "200", "--batch-size", "50",
        "--epochs", "3", "--seed", "5", "--data-seed", "6", "--threads", "1", "--no-progress", "--no-tensorboard"]


def metrics(run):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run)]


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "gencls", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("trust") / "ref"
    proc = cli("train", *ARGS, "--out", str(out))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def _wait_for(path: Path, proc, since: int = 0, timeout=120):
    """Wait until ``proc`` has written ``path`` (a file newer than ``since``)."""
    t = time.time()
    while _mtime(path) <= since:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t < timeout
        time.sleep(0.05)


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(reference_run, tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(0)
    last = out / "checkpoints" / "last.safetensors"
    kills = 0
    proc = cli("train", *ARGS, "--checkpoint-every", "7", "--out", str(out))
    _wait_for(last, proc)
    while True:
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:  # finished before we struck
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if kills == 4:
            proc = cli("train", "--resume", "--out", str(out), "--no-progress")
            break
        since = _mtime(last)
        proc = cli("train", "--resume", "--out", str(out), "--checkpoint-every", "7", "--no-progress")
        _wait_for(last, proc, since=since)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert kills >= 2
    assert metrics(out) == metrics(reference_run)
    x = torch.rand(16, 1, 28, 28)
    assert torch.equal(gencls.load_run(out, "last").logits(x), gencls.load_run(reference_run, "last").logits(x))
    print(f"\n{kills} kills; final metrics equal: {metrics(out)[-1]}")


def test_sigterm_and_sigint_stop_with_a_checkpoint(reference_run, tmp_path):
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        out = tmp_path / sig.name
        proc = cli("train", *ARGS, "--checkpoint-every", "1000", "--out", str(out))
        _wait_for(out / "checkpoints" / "last.safetensors", proc)  # the end of epoch 1
        time.sleep(0.3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            continue  # it finished first; nothing to test this time
        assert proc.returncode == code, err
        assert "--resume" in err and "Traceback" not in err
        proc = cli("train", "--resume", "--out", str(out), "--no-progress")
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert metrics(out) == metrics(reference_run)


def _nan_batch(method):
    x = torch.rand(8, 1, 28, 28)
    x[0, 0, 0, 0] = float("nan")
    unl = torch.rand(8 * max(1, method.unlabelled_batches), 1, 28, 28) if method.unlabelled_batches else None
    return x, torch.arange(8) % 10, unl


@pytest.mark.parametrize("name", ["improved-gan", "supervised"])
def test_nan_loss_stops_or_is_skipped(name):
    torch.manual_seed(0)
    m = create_method(name, {"hidden": [32, 16]}, (1, 28, 28), 10).train()
    m.setup(torch.rand(64, 1, 28, 28))
    with pytest.raises(NonFiniteError, match="loss_lab is not finite"):
        m.train_step(*_nan_batch(m))
    m = create_method(name, {"hidden": [32, 16]}, (1, 28, 28), 10).train()
    m.setup(torch.rand(64, 1, 28, 28))
    m.guard.policy = "skip"
    before = {k: v.clone() for k, v in m.state_dict().items() if "ema" not in k and "gen" not in k}
    m.train_step(*_nan_batch(m))
    assert m.guard.skipped >= 1
    after = m.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # the classifier was not updated


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, data_root):
    cfg = gencls.TrainConfig(method="supervised", labels=100, subset=1000, val_size=100, epochs=3, batch_size=50,
                             out=str(tmp_path / "div"), progress=False, tensorboard=False, device="cpu",
                             method_config={"hidden": [64, 32]})
    gencls.train(cfg)
    good = (tmp_path / "div" / "checkpoints" / "last.safetensors").read_bytes()
    with pytest.raises(TrainingStopped, match=r"step \d+ \(epoch 4\)"):
        gencls.train(out=cfg.out, epochs=5, max_grad_norm=1e-6, resume=True)  # every gradient "explodes"
    assert (tmp_path / "div" / "checkpoints" / "last.safetensors").read_bytes() == good
    gencls.train(out=cfg.out, epochs=4, max_grad_norm=1e-6, on_nan="skip", resume=True)
    rows = read_metrics(tmp_path / "div")
    assert rows[-1]["epoch"] == 4 and rows[-1]["skipped_steps"] == 18


def test_skip_policy_leaves_a_nan_batch_out_and_trains_on(tmp_path, data_root, monkeypatch):
    """--on-nan skip: a batch with a NaN image is dropped by the guard, its (NaN) losses are left out
    of the epoch's means, and training goes on; with "stop" before any checkpoint the message says so."""
    from gencls.methods.improved_gan import ImprovedGAN

    real_step, calls = ImprovedGAN.train_step, [0]

    def poisoned(self, x_lab, y_lab, x_unl):
        calls[0] += 1
        if calls[0] == 5:
            x_lab = x_lab.clone()
            x_lab[0, 0, 0, 0] = float("nan")
        return real_step(self, x_lab, y_lab, x_unl)

    monkeypatch.setattr(ImprovedGAN, "train_step", poisoned)
    kw = dict(method="improved-gan", labels=20, subset=300, val_size=50, batch_size=25, epochs=2, progress=False,
              tensorboard=False, sample_every=0, device="cpu", method_config={"hidden": [32, 32], "nz": 8})
    out = gencls.train(gencls.TrainConfig(out=str(tmp_path / "skip"), on_nan="skip", **kw), log=lambda s: None)
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["skipped_steps"] == 1
    assert all(r[k] is not None and r[k] == r[k] for r in rows for k in ("loss_lab", "loss_unl", "loss_gen"))
    calls[0] = 0
    with pytest.raises(TrainingStopped, match=r"step 5 \(epoch 1\): loss_lab is not finite \(nan\); stopped. "
                                              "No checkpoint had been written yet"):
        gencls.train(gencls.TrainConfig(out=str(tmp_path / "stop"), **kw), log=lambda s: None)


def test_a_signal_in_an_epochs_last_step_stops_at_its_end(tmp_path, data_root, monkeypatch):
    """SIGINT during the last step of an epoch (here every step is one: one batch per epoch, and
    --eval-every 2 would not checkpoint epoch 1) stops after that epoch with a checkpoint; the
    resumed run ends as an uninterrupted one, with a sample grid after its last epoch."""
    import os

    from gencls.methods.supervised import Supervised

    kw = dict(method="supervised", labels=20, subset=400, val_size=100, batch_size=300, eval_every=2, sample_every=5,
              progress=False, tensorboard=False, device="cpu", method_config={"hidden": [32]})
    full = gencls.train(gencls.TrainConfig(out=str(tmp_path / "full"), epochs=3, **kw), log=lambda s: None)
    real_step = Supervised.train_step

    def interrupted(self, *batch):
        losses = real_step(self, *batch)
        os.kill(os.getpid(), signal.SIGINT)  # the handler sets a flag: the step finishes
        return losses

    monkeypatch.setattr(Supervised, "train_step", interrupted)
    part = tmp_path / "part"
    with pytest.raises(TrainingStopped, match="SIGINT: stopped after epoch 1") as e:
        gencls.train(gencls.TrainConfig(out=str(part), epochs=3, **kw), log=lambda s: None)
    assert e.value.exit_code == 130
    monkeypatch.setattr(Supervised, "train_step", real_step)
    gencls.train({"out": str(part)}, resume=True, log=lambda s: None)
    assert metrics(part) == metrics(full)


def test_keep_and_checkpoint_every(tmp_path, data_root):
    out = tmp_path / "keep"
    gencls.train(gencls.TrainConfig(method="supervised", labels=100, subset=1000, val_size=100, epochs=4,
                                    batch_size=50, keep=2, checkpoint_every=5, out=str(out), progress=False,
                                    tensorboard=False, method_config={"hidden": [64]}))
    names = sorted(p.name for p in (out / "checkpoints").glob("*.safetensors"))
    assert names == ["best.safetensors", "epoch_0003.safetensors", "epoch_0004.safetensors", "last.safetensors"]
    assert json.loads((out / "checkpoints" / "epoch_0003.json").read_text())["meta"]["epoch"] == 3


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_is_refused_up_front(tiny_disk, data_root):
    with pytest.raises(gencls.GenclsError, match="MiB free"):
        gencls.train(gencls.TrainConfig(method="improved-gan", subset=1000, val_size=100, epochs=1,
                                        out=str(tiny_disk / "run"), progress=False, tensorboard=False))


def test_disk_filling_up_mid_run_keeps_the_last_checkpoint(tiny_disk, data_root):
    out = tiny_disk / "run"
    cfg = gencls.TrainConfig(method="supervised", labels=100, subset=1000, val_size=100, epochs=3, batch_size=50,
                             out=str(out), progress=False, tensorboard=False, method_config={"hidden": [64]})

    def fill(record, method):
        if record["epoch"] == 1:  # something else fills the disk
            with open(tiny_disk / "filler", "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass
    with pytest.raises(TrainingStopped, match="previous complete checkpoint is kept"):
        gencls.train(cfg, on_epoch_end=fill)
    run = gencls.load_run(out, "last")
    assert run.meta["epoch"] == 1
    assert not list((out / "checkpoints").glob(".*.tmp"))
