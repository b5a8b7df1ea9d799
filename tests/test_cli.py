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
