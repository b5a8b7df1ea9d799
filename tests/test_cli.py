"""Mistakes a user can make: one clear line, non-zero exit, no traceback."""
import subprocess
import sys

import pytest


def gencls(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gencls", *args], capture_output=True, text=True, timeout=120, **kw)


@pytest.mark.parametrize("args,needle", [
    (["train", "--method", "nope", "--out", "{tmp}/r"], "unknown method"),
    (["train", "--dataset", "nope", "--out", "{tmp}/r"], "unknown dataset"),
    (["train", "--labels", "0", "--out", "{tmp}/r"], "--labels"),
    (["train", "--labels", "abc", "--out", "{tmp}/r"], "--labels"),
    (["train", "--epochs", "-1", "--out", "{tmp}/r"], "--epochs"),
    (["train", "--out", "{tmp}/afile"], "not a folder"),
    (["train", "--set", "lrr=1", "--out", "{tmp}/r"], "unknown setting"),
    (["train", "--resume", "--out", "{tmp}/none"], "no checkpoint"),
    (["train", "--device", "cuda:99", "--out", "{tmp}/r"], "CUDA"),
    (["train", "--device", "tpu", "--out", "{tmp}/r"], "not a device"),
    (["train", "--set", "lr=-1", "--subset", "500", "--val-size", "100", "--out", "{tmp}/r"], "invalid setting"),
    (["train", "--set", "ema_decay=x", "--out", "{tmp}/r"], "must be a float"),
    (["train", "--seed", "99999999999999", "--out", "{tmp}/r"], "--seed"),
    (["train", "--on-nan", "maybe", "--out", "{tmp}/r"], "--on-nan"),
    (["generate", "{tmp}/missing", "--out", "x.foo"], "image file name"),
    (["evaluate", "{tmp}/missing"], "no such run"),
    (["predict", "{tmp}/missing", "x.png"], "no such run"),
    (["generate", "{tmp}/missing", "--out", "x.png"], "no such run"),
    (["evaluate", "{tmp}/afile"], "not a gencls checkpoint"),
    (["export", "{tmp}/missing", "--out", "{tmp}/m.onnx"], "no such run"),
    (["export", "{tmp}/missing", "--out", "{tmp}/m.onnx", "--format", "tflite"], "invalid choice"),
    (["serve", "{tmp}/missing"], "no such run"),
    (["predict", "--onnx", "{tmp}/missing.onnx", "x.png"], "no such ONNX file"),
    (["predict", "{tmp}/afile"], "usage: gencls predict RUN PATH"),
    (["bogus"], "invalid choice"),
    (["generate", "{tmp}/missing", "--out", "x.png", "--seed", "99999999999999999999"], "below 2^63"),
    (["evaluate", "{tmp}/missing", "--seed", "-3"], "0 or more"),
    (["serve", "{tmp}/missing", "--port", "70000"], "not a port"),
    (["serve", "{tmp}/missing", "--max-upload-mb", "inf"], "size in MB"),
    (["report", "{tmp}/missing"], "no such run"),
    (["compare", "--methods", "supervised,nope", "--out", "{tmp}/c"], "unknown method"),
    (["compare", "--set", "aae:lrr", "--out", "{tmp}/c"], "METHOD:KEY=VALUE"),
])
def test_user_mistakes(tmp_path, args, needle):
    (tmp_path / "afile").write_text("hello")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = gencls(*args)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


def test_labels_beyond_class_count(tmp_path, data_root):
    proc = gencls("train", "--labels", "7", "--subset", "1000", "--val-size", "100", "--out", str(tmp_path / "r"))
    assert proc.returncode != 0 and "at least one labelled image per class" in proc.stderr


def test_help_and_methods():
    assert gencls("--help").returncode == 0
    proc = gencls("methods")
    assert proc.returncode == 0 and "improved-gan" in proc.stdout and "supervised" in proc.stdout
    assert "vae-m2" in proc.stdout and "aae" in proc.stdout


def test_train_again_from_a_runs_config(tmp_path, data_root):
    """`train --config RUN/config.json --out NEW` trains the same run again: same settings, same
    labelled draw, same numbers; flags override the file; a bad file is one line."""
    import json

    first = gencls("train", "--method", "supervised", "--labels", "20", "--subset", "600", "--val-size", "100",
                   "--epochs", "1", "--batch-size", "50", "--threads", "1", "--device", "cpu", "--set", "lr=0.001",
                   "--out", str(tmp_path / "a"), "--no-progress")
    assert first.returncode == 0, first.stderr
    again = gencls("train", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr
    a, b = (json.loads((tmp_path / r / "config.json").read_text()) for r in "ab")
    assert {**a, "out": None} == {**b, "out": None} and b["method_config"] == {"lr": 0.001}
    assert (tmp_path / "a" / "split.json").read_text() == (tmp_path / "b" / "split.json").read_text()
    ma, mb = ((tmp_path / r / "metrics.jsonl").read_text().splitlines() for r in "ab")
    assert json.loads(ma[0])["val_error"] == json.loads(mb[0])["val_error"]

    (tmp_path / "c.toml").write_text('method = "supervised"\nval-size = 100\nsubset = 600\nepochs = 1\n'
                                     'labels = 20\nbatch_size = 50\nthreads = 1\n[method_config]\nlr = 0.002\n')
    over = gencls("train", "--config", str(tmp_path / "c.toml"), "--set", "ema_decay=0.99", "--epochs", "2",
                  "--out", str(tmp_path / "c"), "--no-progress")
    assert over.returncode == 0, over.stderr
    c = json.loads((tmp_path / "c" / "config.json").read_text())
    assert c["epochs"] == 2 and c["val_size"] == 100 and c["method_config"] == {"lr": 0.002, "ema_decay": 0.99}

    (tmp_path / "bad.toml").write_text('method = "supervised"\nepoch = 3\n')
    for path, needle in [(tmp_path / "bad.toml", "unknown setting epoch"), (tmp_path / "none.json", "no such file"),
                         (tmp_path / "c.toml", "--resume continues")]:
        extra = ["--resume"] if needle.startswith("--resume") else []
        proc = gencls("train", "--config", str(path), "--out", str(tmp_path / "d"), *extra)
        assert proc.returncode != 0 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_config_file_merging_rules(tmp_path):
    """How `train --config` combines a file with flags (no training: the merged settings only)."""
    import json
    from pathlib import Path

    from gencls.config import TrainConfig, config_with_file
    from gencls.errors import GenclsError

    old = Path(__file__).parent / "fixtures" / "run_v1" / "config.json"  # a run from before world_size
    merged = config_with_file(old, {"out": "x"})
    assert merged["folder_test_rule"] == 1 and TrainConfig(**merged).folder_test_rule == 1
    assert "image_size" not in config_with_file(old, {"out": "x", "dataset": "fashion-mnist"})

    user = tmp_path / "user.toml"
    user.write_text('epochs = 3\ndata_seed = 4\n[method_config]\nlr = 0.0005\n')
    m = config_with_file(user, {"method": "supervised", "method_config": {"ema_decay": 0.9}})
    assert m["method_config"] == {"lr": 0.0005, "ema_decay": 0.9} and "folder_test_rule" not in m
    assert config_with_file(user, {"seeds": [1, 2, 3]})["data_seed"] == 4  # a hand-written choice stands
    assert config_with_file(user, {"seeds": [1, 2], "data_seed": 7})["data_seed"] == 7

    run = tmp_path / "config.json"
    run.write_text(json.dumps({"method": "acgan", "method_config": {"g_width": 64}, "seeds": [1, 2], "seed": 1,
                               "data_seed": 1,
                               "world_size": 1, "dataset": "digits", "image_size": [8, 8], "channels": 1}))
    assert "data_seed" not in config_with_file(run, {"seeds": [1, 2, 3]})  # a run's resolved one: each its own
    m = config_with_file(run, {"method": "supervised", "seed": 5})
    assert "method_config" not in m and "seeds" not in m and m["seed"] == 5
    m = config_with_file(run, {"dataset": "mnist"})
    assert "image_size" not in m and "channels" not in m and "folder_test_rule" not in m

    for text, needle in [('{"epochs": "3"}', "epochs = '3' must be an integer"),
                         ('{"method_config": "lr=1"}', "method_config = 'lr=1' must be a table"),
                         ('{"tensorboard": 1}', "tensorboard = 1 must be true/false"),
                         ('[1, 2]', "expected a table")]:
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(GenclsError, match=needle.replace("[", r"\[")):
            config_with_file(tmp_path / "bad.json", {})


def test_a_runs_config_on_another_dataset_asks_for_what_the_run_asked_for(tmp_path, data_root):
    """A run's config.json keeps its data settings as asked (``given``) beside their resolved values:
    `--config RUN/config.json --dataset OTHER` takes --labels 50 again (it used to drop the resolved
    labels and val_size and fall back to the defaults), and the other dataset's own sizes; a resume
    keeps ``given`` as the run started."""
    import json

    import gencls
    from gencls.cli import main
    from gencls.config import config_with_file

    cfg = gencls.TrainConfig(method="supervised", dataset="digits", labels=50, epochs=1, out=str(tmp_path / "a"),
                             progress=False, tensorboard=False, sample_every=0, device="cpu", threads=1,
                             data_root=str(data_root))
    run = gencls.train(cfg, log=lambda s: None)
    record = json.loads((run / "config.json").read_text())
    assert record["given"] == {"labels": 50, "val_size": None, "image_size": None, "channels": None}
    assert record["labels"] == 50 and record["val_size"] == 143 and record["image_size"] == [8, 8]
    m = config_with_file(run / "config.json", {"dataset": "mnist", "out": "b"})
    assert m["labels"] == 50 and "val_size" not in m and "image_size" not in m and "channels" not in m
    assert "val_size" not in config_with_file(run / "config.json", {"out": "b"})  # same dataset: same default
    gencls.train({"out": str(run), "epochs": 2}, resume=True, log=lambda s: None)
    assert json.loads((run / "config.json").read_text())["given"] == record["given"]
    assert main(["train", "--config", str(run / "config.json"), "--dataset", "digits", "--subset", "600",
                 "--epochs", "1", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    c = json.loads((tmp_path / "c" / "config.json").read_text())
    assert c["labels"] == 50 and c["given"] == record["given"] and c["val_size"] == 60  # 10 % of the 600


def test_train_with_chosen_labelled_images(tmp_path, data_root):
    """--labelled FILE: another run's split.json (or a list of rows) fixes the labelled images; the
    validation images are drawn from the others; the rows are kept in config.json, so a resume and
    --config reproduce them, and on another dataset only their number is carried over."""
    import json

    from gencls.cli import main
    from gencls.config import config_with_file

    common = ["--method", "supervised", "--dataset", "digits", "--epochs", "1", "--no-progress", "--no-tensorboard",
              "--sample-every", "0", "--threads", "1", "--data-root", str(data_root)]
    assert main(["train", *common, "--labels", "30", "--out", str(tmp_path / "a")]) == 0
    a = json.loads((tmp_path / "a" / "split.json").read_text())
    assert main(["train", *common, "--labelled", str(tmp_path / "a" / "split.json"), "--data-seed", "7",
                 "--out", str(tmp_path / "b")]) == 0
    b = json.loads((tmp_path / "b" / "split.json").read_text())
    assert b["labelled"] == a["labelled"] and b["validation"] != a["validation"]
    assert not set(b["labelled"]) & set(b["validation"])
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["labelled"] == a["labelled"] and cfg["labels"] == 30
    assert main(["train", "--resume", "--out", str(tmp_path / "b"), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((tmp_path / "b" / "split.json").read_text()) == b
    m = config_with_file(tmp_path / "b" / "config.json", {"dataset": "mnist"})
    assert "labelled" not in m and m["labels"] == 30
    m = config_with_file(tmp_path / "b" / "config.json", {"labels": 50})
    assert "labelled" not in m and m["labels"] == 50

    (tmp_path / "rows.txt").write_text("# one per class, rows of digits' training set\n" +
                                       "\n".join(str(r) for r in a["labelled"][:3]) + "\n")
    assert main(["train", *common, "--labelled", str(tmp_path / "rows.txt"), "--out", str(tmp_path / "c")]) == 2
    assert main(["train", *common, "--labelled", str(tmp_path / "a" / "split.json"), "--labels", "20",
                 "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_an_unknown_argument_points_to_its_commands_help(capsys):
    from gencls.cli import main

    for argv, prog in [(["compare", "--on-nanx", "skip", "--out", "x"], "gencls compare"),
                       (["data", "fetch", "mnist", "--bogus"], "gencls data fetch"),
                       (["predict", "runs/a", "--onnx", "m.onnx", "dir", "extra"], "gencls predict"),
                       (["--bogus"], "gencls")]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"{prog}: error: unrecognized arguments:") and f"(see {prog} --help)" in err, err
    assert main(["train", "--seeds", "1,2", "--seed", "5", "--out", "x"]) == 2  # --seed was ignored
    assert "--seed 5 and --seeds: give one" in capsys.readouterr().err
