"""`compare` on real MNIST (tiny budget): the same labelled draw per seed for every method, the
summary files, parallel jobs, and resuming without retraining finished runs."""
import json

import pytest

import gencls
from gencls.comparison import CompareConfig, compare
from gencls.errors import GenclsError

SETTINGS = dict(dataset="mnist", labels=100, epochs=1, subset=1200, val_size=200, batch_size=50, threads=1,
                device="cpu")


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def first_compare(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    summary = compare(CompareConfig(methods=["supervised", "aae"], seeds=2, jobs=2, out=str(out), **SETTINGS), log=quiet)
    return out, summary


def test_compare_writes_table_plot_and_json(first_compare):
    out, summary = first_compare
    assert [r["method"] for r in summary["methods"]] == ["supervised", "aae"]
    assert len(summary["runs"]) == 4
    for r in summary["methods"]:
        assert r["seeds"] == [1, 2] and r["failed_seeds"] == [] and 0 <= r["mean"] <= 100 and r["std"] >= 0
        assert r["best"]["error"] <= r["mean"] <= r["worst"]["error"]
        assert r["parameters"] > 0 and r["train_seconds"] > 0
    md = (out / "compare.md").read_text()
    assert "| aae |" in md and "1.90 ± 0.10" in md and "Makhzani et al. 2015" in md
    assert "| supervised |" in md and "| none |" in md
    assert "Budget per run: 1 epoch, " in md and "device cpu" in md and "2 run(s) in parallel" in md
    assert "threads per run 1" in md and "sample standard deviation" in md
    assert all(r["device"] == "cpu" for r in summary["runs"])
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "compare.json").read_text())["settings"]["labels"] == 100
    # each run was evaluated on the test set once: eval.json with 10000 images
    for r in summary["runs"]:
        assert json.loads((out / "runs" / r["run"] / "eval.json").read_text())["n"] == 10000


def test_seed_sets_the_labelled_draw_for_every_method(first_compare):
    out, _ = first_compare
    lab = {(m, s): json.loads((out / "runs" / f"{m}-seed{s}" / "split.json").read_text())["labelled"]
           for m in ["supervised", "aae"] for s in [1, 2]}
    assert lab[("supervised", 1)] == lab[("aae", 1)]
    assert lab[("supervised", 2)] == lab[("aae", 2)]
    assert lab[("supervised", 1)] != lab[("supervised", 2)]


def test_compare_resumes_without_retraining(first_compare):
    out, _ = first_compare
    runs = sorted((out / "runs").iterdir())
    stamps = {r.name: (r / "checkpoints" / "last.safetensors").stat().st_mtime_ns for r in runs}
    metrics = {r.name: (r / "metrics.jsonl").read_text() for r in runs}
    # a run whose process died after training but before its result was written
    (out / "runs" / "aae-seed1" / "result.json").unlink()
    lines = []
    summary = compare(CompareConfig(methods=["supervised", "aae"], seeds=3, jobs=1, out=str(out), **SETTINGS),
                      log=lines.append)
    assert "6 runs, 3 already done, 3 to train" in lines[0]
    assert len(summary["runs"]) == 6 and all(len(r["seeds"]) == 3 for r in summary["methods"])
    for r in runs:  # nothing trained again: checkpoints untouched, same metrics
        assert (r / "checkpoints" / "last.safetensors").stat().st_mtime_ns == stamps[r.name], r.name
        assert (r / "metrics.jsonl").read_text() == metrics[r.name]
    assert (out / "runs" / "aae-seed1" / "result.json").exists()
    assert (out / "runs" / "aae-seed3" / "result.json").exists()
    # a third call trains nothing at all
    lines.clear()
    compare(CompareConfig(methods=["supervised", "aae"], seeds=3, out=str(out), **SETTINGS), log=lines.append)
    assert "6 runs, 6 already done, 0 to train" in lines[0]
    # a run trained further outside compare (train --resume --epochs 2): evaluated again, not retrained
    import gencls
    gencls.train(gencls.TrainConfig.from_dict({**json.loads((out / "runs" / "supervised-seed1" / "config.json")
                                                            .read_text()), "epochs": 2}), resume=True, log=quiet)
    lines.clear()
    summary = compare(CompareConfig(methods=["supervised", "aae"], seeds=3, out=str(out), **SETTINGS),
                      log=lines.append)
    best = json.loads((out / "runs" / "supervised-seed1" / "checkpoints" / "best.json").read_text())["meta"]["epoch"]
    r = next(r for r in summary["runs"] if r["run"] == "supervised-seed1")
    assert r["best_epoch"] == best
    if best == 2:  # (almost always: a second epoch of a 1-epoch run lowers the validation error)
        assert any("supervised-seed1 has a newer best checkpoint" in ln for ln in lines)
        assert r["epochs"] == 2 and r["resumed"]


def test_compare_refuses_other_settings_in_the_same_folder(first_compare):
    out, _ = first_compare
    with pytest.raises(GenclsError, match="other settings"):
        compare(CompareConfig(methods=["supervised"], seeds=1, out=str(out), **{**SETTINGS, "epochs": 2}), log=quiet)


def test_default_methods_are_every_built_in_method():
    """compare's default is every method gencls ships (an installed plugin's methods are not added)."""
    from gencls.comparison import DEFAULT_METHODS
    from gencls.methods import list_methods, method_source

    assert CompareConfig().methods == ["improved-gan", "acgan", "vae-m2", "aae", "supervised"]
    assert sorted(DEFAULT_METHODS) == [m for m in list_methods() if method_source(m) is None]


def test_compare_user_mistakes(tmp_path):
    with pytest.raises(GenclsError, match="unknown method"):
        gencls.compare(methods=["supervised", "nope"], out=str(tmp_path / "c"), log=quiet)
    with pytest.raises(GenclsError, match="at least one"):
        gencls.compare(methods=[], out=str(tmp_path / "c"), log=quiet)
    with pytest.raises(GenclsError, match="--seeds"):
        gencls.compare(methods=["supervised"], seeds=0, out=str(tmp_path / "c"), log=quiet)
    # each seed draws its own subset, which cannot hold the chosen rows: refused before seed 1 trains
    with pytest.raises(GenclsError, match="--labelled with --subset 1000 and --seeds 2"):
        gencls.compare(methods=["supervised"], dataset="digits", labelled=list(range(100)), subset=1000, seeds=2,
                       out=str(tmp_path / "c"), log=quiet)
    assert not (tmp_path / "c").exists()


def test_a_diverging_run_is_shown_and_the_others_go_on(tmp_path, data_root, capsys):
    """A run whose loss blows up is recorded as failed (not averaged, not retried), the rest of the
    table is written, and the CLI exits non-zero."""
    from gencls.cli import main

    out = tmp_path / "cmp"
    settings = {**SETTINGS, "labels": 20, "subset": 600, "val_size": 100}
    summary = compare(CompareConfig(methods=["supervised", "improved-gan"], seeds=1, out=str(out),
                                    method_configs={"improved-gan": {"lr": 1e30}}, **settings), log=quiet)
    assert summary["failed"] == ["improved-gan-seed1"]
    ig = next(r for r in summary["methods"] if r["method"] == "improved-gan")
    assert ig["mean"] is None and ig["seeds"] == [] and ig["failed_seeds"] == [1]
    sup = next(r for r in summary["methods"] if r["method"] == "supervised")
    assert sup["seeds"] == [1] and sup["std"] is None  # one seed: no standard deviation
    md = (out / "compare.md").read_text()
    assert "| improved-gan | 1 failed (seed 1) |" in md and "not finite" in md
    assert "(n=1)" in md and "±" not in md.split("| supervised |")[1].split("\n")[0]
    assert (out / "runs" / "improved-gan-seed1" / "failed.json").exists()
    assert "failed" in (out / "logs" / "improved-gan-seed1.log").read_text()
    assert gencls.report(out).exists()  # the page shows the failed run too
    # the CLI on the same folder: nothing retrained, the table printed, exit status 1
    rc = main(["compare", "--methods", "supervised,improved-gan", "--seeds", "1", "--out", str(out),
               "--dataset", "mnist", "--labels", "20", "--epochs", "1", "--subset", "600", "--val-size", "100",
               "--batch-size", "50", "--threads", "1", "--device", "cpu", "--set", "improved-gan:lr=1e30"])
    captured = capsys.readouterr()
    assert rc == 1 and "1 failed (seed 1)" in captured.out and "improved-gan-seed1" in captured.err


def test_compare_on_a_small_dataset_uses_trains_validation_default(tmp_path, data_root):
    """--val-size left out resolves as in train (10% of the training images), so digits works; a
    first attempt that failed before training anything does not pin the folder's settings."""
    out = tmp_path / "cmp"
    small = dict(methods=["supervised"], dataset="digits", labels=20, seeds=1, epochs=1, batch_size=50, threads=1,
                 device="cpu", out=str(out))
    with pytest.raises(GenclsError, match="--val-size 5000"):
        compare(CompareConfig(val_size=5000, **small), log=quiet)
    summary = compare(CompareConfig(**small), log=quiet)
    assert summary["runs"][0]["val_images"] == 143
    assert "validation 143 images" in (out / "compare.md").read_text()


def test_an_older_compare_folder_resumes_with_its_own_settings(first_compare, tmp_path):
    """A folder made before --val-size defaulted as in train (its settings say 5000 or, here, 200)
    and before its settings recorded the folder test rule: the same command without --val-size
    reuses it as it is, with the rule its runs were made with."""
    import shutil

    out, _ = first_compare
    old = shutil.copytree(out, tmp_path / "old")
    settings = json.loads((old / "compare_settings.json").read_text())
    del settings["folder_test_rule"]
    (old / "compare_settings.json").write_text(json.dumps(settings))
    lines = []
    rest = {k: v for k, v in SETTINGS.items() if k != "val_size"}
    compare(CompareConfig(methods=["supervised", "aae"], seeds=1, out=str(old), **rest), log=lines.append)
    assert "2 runs, 2 already done, 0 to train" in lines[0]
    saved = json.loads((old / "compare_settings.json").read_text())
    assert saved["val_size"] == 200 and saved["folder_test_rule"] == 2  # the rule its runs were made with


def test_compare_with_chosen_labelled_images(tmp_path, data_root):
    """compare --labelled FILE: every method and seed trains on those labelled rows (validation drawn
    per seed); the folder's settings hold them, and another choice is refused in a short line."""
    from gencls.cli import main
    from gencls.data import load_split

    y = load_split("digits", "train", data_root, log=quiet).labels
    rows = sorted(int(i) for c in range(10) for i in (y == c).nonzero().flatten()[:2])
    (tmp_path / "rows.txt").write_text(" ".join(map(str, rows)))
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "supervised", "--dataset", "digits", "--seeds", "2", "--epochs", "1",
            "--batch-size", "50", "--threads", "1", "--device", "cpu", "--out", str(out)]
    assert main([*args, "--labelled", str(tmp_path / "rows.txt")]) == 0
    for s in (1, 2):
        split = json.loads((out / "runs" / f"supervised-seed{s}" / "split.json").read_text())
        assert split["labelled"] == rows
    v1, v2 = (json.loads((out / "runs" / f"supervised-seed{s}" / "split.json").read_text())["validation"] for s in (1, 2))
    assert v1 != v2
    settings = json.loads((out / "compare_settings.json").read_text())
    assert settings["labelled"] == rows and settings["labels"] == 20
    md = (out / "compare.md").read_text()
    assert "digits, 20 labels" in md and "the --labelled rows" in md
    with pytest.raises(GenclsError, match="labelled was 20 chosen rows"):
        compare(CompareConfig(methods=["supervised"], dataset="digits", seeds=2, epochs=1, batch_size=50, threads=1,
                              device="cpu", out=str(out), labelled=rows[1:]), log=quiet)


@pytest.mark.parametrize("said,says", [
    ("SIGINT: stopped after epoch 1 (step 9); checkpoint written. Continue with `gencls train --resume --out R`",
     "SIGINT: stopped after epoch 1 (step 9); checkpoint written. Run the same compare command again to continue."),
    ("interrupted before the first checkpoint: nothing to resume in R; start again with --overwrite",
     "interrupted before the first checkpoint: nothing to resume in R. Run the same compare command again to continue."),
    ("could not write a checkpoint into R (No space left on device); the previous complete checkpoint is kept",
     "the previous complete checkpoint is kept. Run the same compare command again to continue.")])
def test_a_stopped_run_says_to_run_compare_again(tmp_path, monkeypatch, said, says):
    """compare has no --resume or --overwrite: a stopped run's advice is compare's own, in sentences."""
    from gencls.comparison import _run_one
    from gencls.errors import TrainingStopped
    from gencls.training import trainer

    def stopped(*a, **kw):
        raise TrainingStopped(said, 130)

    monkeypatch.setattr(trainer, "train", stopped)
    tc = CompareConfig(methods=["supervised"], dataset="digits", out=str(tmp_path)).train_config("supervised", 1, "x")
    with pytest.raises(TrainingStopped) as e:
        _run_one(tc.to_dict(), str(tmp_path / "runs" / "supervised-seed1"))
    assert str(e.value).endswith(says) and "--overwrite" not in str(e.value) and e.value.exit_code == 130


def test_a_default_labels_folder_accepts_the_count_its_runs_used(tmp_path, data_root):
    """A compare folder made without --labels (the dataset's default, 100 here), run again with
    --labels 100: the same comparison, not "labels was None, now 100"."""
    small = dict(methods=["supervised"], dataset="digits", seeds=1, epochs=1, batch_size=50, threads=1,
                 device="cpu", out=str(tmp_path / "cmp"))
    compare(CompareConfig(**small), log=quiet)
    summary = compare(CompareConfig(labels=100, **small), log=quiet)
    assert summary["settings"]["labels"] is None and summary["runs"][0]["labelled_images"] == 100
    with pytest.raises(GenclsError, match="labels was None, now 50"):
        compare(CompareConfig(labels=50, **small), log=quiet)


def test_a_stop_keeps_its_exit_status_through_a_worker_process():
    """compare --jobs: a run stopped by SIGTERM comes back from its worker process pickled; its exit
    status (143) was lost (exit 2)."""
    import pickle

    from gencls.errors import TrainingDiverged, TrainingStopped

    for e in (TrainingStopped("SIGTERM: stopped", 143), TrainingDiverged("loss is not finite", 1)):
        again = pickle.loads(pickle.dumps(e))
        assert type(again) is type(e) and str(again) == str(e) and again.exit_code == e.exit_code
