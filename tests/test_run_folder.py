"""A run folder belongs to one trainer at a time; what a kill leaves behind in it (temporary
files, a .json copy behind its checkpoint, a seeds commit cut short) is tidied or settled
without losing newer work; checkpoint names are what they seem."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gencls
from gencls.training.checkpoint import read_checkpoint_meta
from gencls.training.runlog import read_metrics

DIGITS = ["--method", "supervised", "--dataset", "digits", "--threads", "1", "--no-progress", "--no-tensorboard",
          "--sample-every", "0"]
TIMING = ("epoch_seconds", "images_per_second")


def cfg(tmp_path, name, **kw):
    base = dict(method="supervised", dataset="digits", epochs=1, out=str(tmp_path / name), progress=False,
                tensorboard=False, sample_every=0, device="cpu", threads=1)
    base.update(kw)
    return gencls.TrainConfig(**base)


def quiet(*a):
    pass


def rows(run):
    return [{k: v for k, v in r.items() if k not in (*TIMING, "seed")} for r in read_metrics(run)]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "gencls", *args], capture_output=True, text=True, timeout=300)


def _wait_for(path: Path, proc, timeout=120):
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t < timeout
        time.sleep(0.05)


def _refused(r, folder: Path, pid: int | None = None):
    assert r.returncode == 2, (r.returncode, r.stderr)
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert str(folder) in line and "another gencls process" in line, line
    if pid is not None:
        assert f"pid {pid}" in line, line


def test_a_kill_between_a_checkpoint_and_its_json_copy(tmp_path, data_root, monkeypatch):
    """best.safetensors (its header holds the metadata) is the truth: compare reads it, not a
    best.json a kill left describing the previous best."""
    from gencls.comparison import _result_is_current

    out = gencls.train(cfg(tmp_path, "r", val_size=0), log=quiet)  # no validation: every epoch is the best
    import gencls.training.checkpoint as checkpoint

    real = checkpoint.atomic_write_json

    def killed(path, obj):
        if Path(path).name == "best.json":
            raise KeyboardInterrupt  # the process dies between best.safetensors and best.json
        return real(path, obj)

    monkeypatch.setattr(checkpoint, "atomic_write_json", killed)
    with pytest.raises(gencls.GenclsError):
        gencls.train({"out": str(out), "epochs": 2}, resume=True, log=quiet)
    monkeypatch.setattr(checkpoint, "atomic_write_json", real)
    best = out / "checkpoints" / "best"
    assert read_checkpoint_meta(best.with_suffix(".safetensors"))["epoch"] == 2
    assert json.loads(best.with_suffix(".json").read_text())["meta"]["epoch"] == 1  # the stale copy
    assert not _result_is_current(out, {"best_epoch": 1})  # compare evaluates the new best
    assert _result_is_current(out, {"best_epoch": 2})


def test_kept_epochs_are_pruned_by_number(tmp_path, data_root):
    """--keep sorts epoch_NNNN by number: past epoch 9999 (epoch_10000) the oldest still goes."""
    out = gencls.train(cfg(tmp_path, "k", keep=1), log=quiet)
    ck = out / "checkpoints"
    for n in (9999, 10000):
        for suffix in (".safetensors", ".json"):
            shutil.copy(ck / f"epoch_0001{suffix}", ck / f"epoch_{n}{suffix}")
    gencls.train({"out": str(out), "epochs": 2, "keep": 1}, resume=True, log=quiet)
    assert sorted(p.name for p in ck.glob("epoch_*")) == ["epoch_10000.json", "epoch_10000.safetensors"]


def test_a_pending_seeds_commit_is_no_checkpoint_name(tmp_path, data_root):
    out = gencls.train(cfg(tmp_path, "n"), log=quiet)
    ck = out / "checkpoints"
    for suffix in (".safetensors", ".json"):
        shutil.copy(ck / f"last{suffix}", ck / f"last.next{suffix}")
    with pytest.raises(gencls.GenclsError, match="a checkpoint name such as"):
        gencls.load_run(out, which="last.next")
    with pytest.raises(gencls.GenclsError, match=r"it has best, last\)"):
        gencls.load_run(out, which="epoch_0001")
