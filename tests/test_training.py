"""Training on real MNIST: it learns, checkpoints reload exactly, resume equals an unbroken run."""
import json
from pathlib import Path

import pytest
import torch

import gencls
from gencls.methods import get_method_class
from gencls.training.runlog import read_metrics

TIMING = ("epoch_seconds", "images_per_second")


def cfg(tmp_path, name, **kw):
    base = dict(method="improved-gan", dataset="mnist", labels=100, val_size=200, subset=1200, epochs=2,
                batch_size=50, seed=3, data_seed=4, out=str(tmp_path / name), progress=False, tensorboard=False,
                sample_every=1, device="cpu")
    base.update(kw)
    return gencls.TrainConfig(**base)


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("method,labels,bound", [("improved-gan", 1000, 0.16), ("supervised", 1000, 0.16),
                                                 ("vae-m2", 1000, 0.16), ("aae", 1000, 0.16)])
def test_short_training_learns(tmp_path, data_root, method, labels, bound):
    out = gencls.train(cfg(tmp_path, method, method=method, labels=labels, subset=3000, val_size=500,
                           epochs=6, batch_size=100, tensorboard=True))
    rows = read_metrics(out)
    assert len(rows) == 6
    assert rows[-1]["best_val_error"] < bound, rows
    assert rows[0]["val_error"] > rows[-1]["best_val_error"]
    # the run folder holds everything a run must
    for f in ["config.json", "split.json", "metrics.jsonl", "checkpoints/last.safetensors",
              "checkpoints/best.safetensors", "checkpoints/best.json"]:
        assert (out / f).exists(), f
    assert any((out / "tensorboard").iterdir())
    if get_method_class(method).can_generate:
        assert (out / "samples" / "epoch_006.png").exists()


def test_checkpoint_predicts_like_the_trained_model(tmp_path, data_root):
    out = gencls.train(cfg(tmp_path, "a"))
    rows = read_metrics(out)
    run = gencls.load_run(out, which="last")
    # the validation error recorded during training is reproduced by the reloaded model
    val = gencls.evaluate(run, split="val", write=False)
    assert val["n"] == 200
    assert abs(val["error"] - rows[-1]["val_error"]) < 1e-6  # same images wrong (1 image = 0.005)
    # loading twice gives bit-identical predictions
    x = torch.rand(16, 1, 28, 28)
    assert torch.equal(run.logits(x), gencls.load_run(out, which="last").logits(x))
    split = json.loads((out / "split.json").read_text())
    assert len(split["labelled"]) == 100 and len(split["validation"]) == 200


def test_resume_equals_uninterrupted(tmp_path, data_root):
    full = gencls.train(cfg(tmp_path, "full", epochs=3))
    part = gencls.train(cfg(tmp_path, "part", epochs=1))  # a run stopped after one epoch
    gencls.train(cfg(tmp_path, "part", epochs=3), resume=True)
    assert strip_timing(read_metrics(full)) == strip_timing(read_metrics(part))
    x = torch.rand(32, 1, 28, 28)
    assert torch.equal(gencls.load_run(full, "last").logits(x), gencls.load_run(part, "last").logits(x))


def test_settings_changed_on_resume_are_kept_by_the_next_resume(tmp_path, data_root):
    """--resume --epochs 3 stopped after epoch 2: a plain --resume goes on to epoch 3 (config.json
    holds the new setting); an unchanged setting spelled as on the command line is accepted."""
    small = dict(method="supervised", subset=600, val_size=100, batch_size=50, method_config={"hidden": [32]})
    out = gencls.train(cfg(tmp_path, "r", epochs=1, **small), log=lambda s: None)

    class Stop(Exception):
        pass

    def stop_after_2(record, method):
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        gencls.train({"out": str(out), "epochs": 3}, resume=True, log=lambda s: None, on_epoch_end=stop_after_2)
    assert json.loads((out / "config.json").read_text())["epochs"] == 3
    lines = []
    gencls.train({"out": str(out), "image_size": "28"}, resume=True, log=lines.append)
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    gencls.train({"out": str(out)}, resume=True, log=lines.append)
    assert any("nothing to train: the run has finished its 3 epochs" in s for s in lines)
    with pytest.raises(gencls.GenclsError, match="image_size cannot change.*config.json"):
        gencls.train({"out": str(out), "image_size": "32"}, resume=True, log=lambda s: None)


def test_resume_with_a_trainconfig_keeps_the_runs_settings_it_leaves_at_their_defaults(tmp_path, data_root):
    """gencls.train(TrainConfig(out=..., epochs=2), resume=True): the settings given (epochs, threads)
    apply; those left at TrainConfig's defaults do not undo the run's own (eval_every 2, not 1)."""
    small = dict(method="supervised", subset=600, val_size=100, batch_size=50, method_config={"hidden": [32]})
    out = gencls.train(cfg(tmp_path, "t", epochs=1, eval_every=2, **small), log=lambda s: None)
    gencls.train(gencls.TrainConfig(out=str(out), epochs=3, threads=1, progress=False, tensorboard=False),
                 resume=True, log=lambda s: None)
    saved = json.loads((out / "config.json").read_text())
    assert saved["eval_every"] == 2 and saved["epochs"] == 3 and saved["threads"] == 1
    assert [r["epoch"] for r in read_metrics(out) if r.get("val_error") is not None] == [1, 2, 3]


def test_sample_grid_after_the_last_epoch(tmp_path, data_root):
    out = gencls.train(cfg(tmp_path, "s", epochs=2, sample_every=5, subset=600, val_size=100,
                           method_config={"hidden": [32, 32], "nz": 8}), log=lambda s: None)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_002.png"]


def test_existing_run_is_not_overwritten_silently(tmp_path, data_root):
    gencls.train(cfg(tmp_path, "r", epochs=1))
    with pytest.raises(gencls.GenclsError, match="--resume"):
        gencls.train(cfg(tmp_path, "r", epochs=1))
    gencls.train(cfg(tmp_path, "r", epochs=1), overwrite=True)


def test_epoch_loss_sums_leave_non_finite_steps_out_and_round_trip():
    from gencls.training.trainer import _EpochLosses

    sums = _EpochLosses()
    n = 57
    for i in range(n):
        bad = i == 3
        sums.add({"a": torch.tensor(float("nan") if bad else 1.0), "b": torch.tensor(float(i))})
    assert sums.non_finite() == 1
    means = sums.means()
    assert means["a"] == 1.0 and means["b"] == pytest.approx((sum(range(n)) - 3) / (n - 1))
    again = _EpochLosses.from_state(sums.state(), steps=0, device="cpu")
    assert again.means() == means and again.non_finite() == 1
    old = _EpochLosses.from_state({"a": torch.tensor(6.0)}, steps=3, device="cpu")  # an older checkpoint's sums
    assert old.means() == {"a": 2.0} and old.non_finite() == 0
    old.add({"a": torch.tensor(4.0)})
    assert old.means() == {"a": 2.5}
    # resumed inside an epoch by a version that logs another term (aae's gen_cat): no shape error
    old.add({"a": torch.tensor(2.0), "c": torch.tensor(5.0)})
    assert old.means() == {"a": 2.4, "c": 1.0} and old.names == ["a", "c"]


def test_lr_decay_schedule_and_resume(tmp_path, data_root):
    """--lr-decay START END: the reference CIFAR schedule by hand; every optimizer follows it; a
    resumed run scales the same base rate, so it equals the unbroken run."""
    from gencls.training.trainer import lr_factor

    assert [lr_factor([800, 1200], e) for e in (1, 800, 801, 802, 1200)] == [1.0, 1.0, 1.0, 399 / 400, 1 / 400]
    assert lr_factor([1, 3], 1) == 1.0 and lr_factor([1, 3], 2) == 1.0 and lr_factor([1, 3], 3) == 0.5
    kw = dict(method="supervised", lr_decay=[1, 3], epochs=3)
    full = gencls.train(cfg(tmp_path, "full", **kw))
    gencls.train(cfg(tmp_path, "part", **{**kw, "epochs": 2}))
    gencls.train(cfg(tmp_path, "part", **kw), resume=True)
    assert strip_timing(read_metrics(full)) == strip_timing(read_metrics(tmp_path / "part"))
    x = torch.rand(32, 1, 28, 28)
    assert torch.equal(gencls.load_run(full, "last").logits(x), gencls.load_run(tmp_path / "part", "last").logits(x))
    run = gencls.load_run(full, "last")
    from gencls.training.checkpoint import load_checkpoint
    state, _ = load_checkpoint(full / "checkpoints" / "last.safetensors")
    base = run.method.config["lr"]
    groups = [g for opt in state["method"]["optimizers"].values() for g in opt["param_groups"]]
    assert groups and all(g["initial_lr"] == pytest.approx(base) and g["lr"] == pytest.approx(base / 2)
                          for g in groups)
    for bad, needle in [(dict(lr_decay=[3, 3]), "START < END"), (dict(lr_decay=[False, True]), "START < END"),
                        (dict(lr_decay=[1, 3], epochs=4), "goes past --lr-decay's end"),
                        (dict(lr_decay=[1, 3], seeds=[1, 2], stack_seeds="on"), "--stack-seeds on")]:
        with pytest.raises(gencls.GenclsError, match=needle):
            cfg(tmp_path, "bad", **bad).validate()
    # the schedule may change on resume (from then on), e.g. to train further
    gencls.train(cfg(tmp_path, "part", method="supervised", lr_decay=[2, 5], epochs=4), resume=True)
    assert json.loads((tmp_path / "part" / "config.json").read_text())["lr_decay"] == [2, 5]
    assert len(read_metrics(tmp_path / "part")) == 4


@pytest.mark.parametrize("name", ["grid.png", "labelled.jpg"])
def test_sample_grids_are_written_atomically(tmp_path, monkeypatch, name):
    """A grid is a complete image or the previous one: a write that dies half-way (a kill, a full
    disk) never leaves a truncated file where the samples of a finished epoch were."""
    from PIL import Image

    from gencls.training.runlog import save_grid, save_labelled_grid

    def write(path):
        if name.startswith("labelled"):
            save_labelled_grid(torch.rand(4, 1, 8, 8), path, nrow=2, row_labels=["a", "b"])
        else:
            save_grid(torch.rand(4, 1, 8, 8), path, nrow=2)

    path = tmp_path / "samples" / name
    write(path)
    good = path.read_bytes()
    with Image.open(path) as im:
        assert im.format == ("PNG" if name.endswith(".png") else "JPEG")
    real_save = Image.Image.save

    def dies_half_way(self, fp, format=None, **kw):
        if isinstance(fp, (str, Path)):
            fp = open(fp, "wb")
        fp.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", dies_half_way)
    with pytest.raises(OSError):
        write(path)
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert path.read_bytes() == good
    assert sorted(p.name for p in path.parent.iterdir()) == [name]


def test_an_interrupt_before_the_first_checkpoint_does_not_offer_resume(tmp_path, data_root, monkeypatch):
    """A second Ctrl-C (KeyboardInterrupt) before any checkpoint: the message must not send the
    user to --resume, which has nothing to read; after a checkpoint it does, and --resume works."""
    from gencls.methods.supervised import Supervised
    from gencls.training.trainer import TrainingStopped

    kw = dict(method="supervised", subset=600, val_size=100, method_config={"hidden": [32]}, sample_every=0)
    real_step, calls = Supervised.train_step, [0]

    def interrupted_at(n):
        def step(self, *batch):
            calls[0] += 1
            if calls[0] == n:
                raise KeyboardInterrupt
            return real_step(self, *batch)
        return step

    monkeypatch.setattr(Supervised, "train_step", interrupted_at(3))  # inside epoch 1
    with pytest.raises(TrainingStopped) as e:
        gencls.train(cfg(tmp_path, "early", **kw), log=lambda s: None)
    assert e.value.exit_code == 130 and "--resume" not in str(e.value) and "--overwrite" in str(e.value)
    with pytest.raises(gencls.GenclsError, match="no checkpoint to resume from"):
        gencls.train({"out": str(tmp_path / "early")}, resume=True, log=lambda s: None)

    calls[0] = 0
    monkeypatch.setattr(Supervised, "train_step", interrupted_at(13))  # inside epoch 2 (10 steps an epoch)
    with pytest.raises(TrainingStopped, match="--resume") as e:
        gencls.train(cfg(tmp_path, "later", **kw), log=lambda s: None)
    assert e.value.exit_code == 130
    monkeypatch.setattr(Supervised, "train_step", real_step)
    gencls.train({"out": str(tmp_path / "later")}, resume=True, log=lambda s: None)
    assert [r["epoch"] for r in read_metrics(tmp_path / "later")] == [1, 2]
