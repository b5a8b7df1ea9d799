"""AC-GAN on real MNIST, and the generation commands (API first, then the CLI)."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

import gencls
from gencls.methods import CannotGenerate
from gencls.training.runlog import read_metrics


def cfg(tmp_path, name, **kw):
    base = dict(method="acgan", dataset="mnist", labels=100, val_size=500, subset=3000, epochs=4, batch_size=100,
                seed=1, data_seed=1, out=str(tmp_path / name), progress=False, tensorboard=False, device="cpu")
    base.update(kw)
    return gencls.TrainConfig(**base)


def gencls_cli(*args):
    return subprocess.run([sys.executable, "-m", "gencls", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("labels,bound", [(100, 0.5), ("all", 0.3)])
def test_short_acgan_training_learns(tmp_path, data_root, labels, bound):
    out = gencls.train(cfg(tmp_path, f"acgan-{labels}", labels=labels))
    rows = read_metrics(out)
    assert rows[-1]["best_val_error"] < bound, rows
    assert rows[0]["val_error"] > rows[-1]["best_val_error"] or rows[0]["val_error"] < bound
    assert (out / "samples" / "epoch_004.png").exists()
    split = json.loads((out / "split.json").read_text())
    assert len(split["labelled"]) == (100 if labels == 100 else 2500)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("gen-runs")
    small = dict(subset=1200, val_size=200, epochs=1, labels=100)
    return {"acgan": gencls.train(cfg(root, "acgan", **small)),
            "improved-gan": gencls.train(cfg(root, "igan", method="improved-gan", **small))}


def test_generate_api_classes_and_seeds(runs):
    run = gencls.load_run(runs["acgan"])
    a = gencls.generate(run, n=6, seed=3, labels=7)
    assert a.shape == (6, 1, 28, 28) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, gencls.generate(run, n=6, seed=3, labels="7"))  # by name or index
    assert not torch.equal(a, gencls.generate(run, n=6, seed=4, labels=7))
    assert not torch.equal(a, gencls.generate(run, n=6, seed=3, labels=1))
    images, rows = gencls.generate_per_class(run, per_class=3, seed=0)
    assert images.shape == (30, 1, 28, 28) and rows == [str(i) for i in range(10)]
    assert torch.equal(images[21:24], gencls.generate(run, n=30, seed=0, labels=[c for c in range(10) for _ in range(3)])[21:24])
    with pytest.raises(gencls.GenclsError, match="unknown class"):
        gencls.generate(run, n=2, labels="11")


def test_interpolation_walks_between_two_points(runs):
    for name in runs:
        images, row_labels = gencls.interpolate(runs[name], rows=3, steps=8, seed=0)
        assert images.shape == (24, 1, 28, 28)
        walk = images.view(3, 8, -1)
        step = (walk[:, 1:] - walk[:, :-1]).abs().mean()
        ends = (walk[:, -1] - walk[:, 0]).abs().mean()
        assert step < ends  # small steps along the row, a longer way end to end
        assert torch.equal(images, gencls.interpolate(runs[name], rows=3, steps=8, seed=0)[0])
        assert (row_labels == ["0", "1", "2"]) if name == "acgan" else row_labels is None


def test_unconditional_method_refuses_a_class(runs):
    with pytest.raises(CannotGenerate, match="cannot generate a chosen class"):
        gencls.generate(runs["improved-gan"], n=4, labels=3)
    proc = gencls_cli("generate", runs["improved-gan"], "--class", "3", "--out", runs["improved-gan"] / "x.png")
    assert proc.returncode != 0 and "cannot generate a chosen class" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_generate_cli(runs, tmp_path):
    run = runs["acgan"]
    proc = gencls_cli("generate", run, "--class", "7", "--n", "12", "--nrow", "6", "--out", tmp_path / "sevens.png",
                      "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "sevens.png").size == (2 + 6 * 30, 2 + 2 * 30)
    proc = gencls_cli("generate", run, "--per-class", "4", "--out", tmp_path / "grid.png", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    w, h = Image.open(tmp_path / "grid.png").size
    assert h == 2 + 10 * 30 and w > 2 + 4 * 30  # a margin for the row labels
    proc = gencls_cli("generate", run, "--interpolate", "--rows", "2", "--out", tmp_path / "walk.png", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    proc = gencls_cli("generate", run, "--class", "3", "--n", "5", "--out-dir", tmp_path / "threes", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in (tmp_path / "threes").glob("*.png"))
    assert files == [f"{i:05d}_3.png" for i in range(5)]
    assert Image.open(tmp_path / "threes" / files[0]).size == (28, 28)
    # --seed makes the files repeatable
    gencls_cli("generate", run, "--class", "3", "--n", "5", "--out-dir", tmp_path / "again", "--seed", "1")
    assert (tmp_path / "again" / files[2]).read_bytes() == (tmp_path / "threes" / files[2]).read_bytes()
    proc = gencls_cli("generate", runs["improved-gan"], "--n", "3", "--out-dir", tmp_path / "igan")
    assert proc.returncode == 0 and all("_pred-" in p.name for p in (tmp_path / "igan").glob("*.png"))
    # a folder holding an earlier call's images: refused (the new ones would mix with them) ...
    (tmp_path / "threes" / "notes.txt").write_text("mine")
    (tmp_path / "threes" / "20240101_123456.png").write_bytes(b"a photo named by its date")  # not ours
    proc = gencls_cli("generate", run, "--class", "7", "--n", "2", "--out-dir", tmp_path / "threes")
    assert proc.returncode == 2 and "holds 5 generated image(s) of an earlier call (00000_3.png" in proc.stderr
    assert "Traceback" not in proc.stderr and len(list((tmp_path / "threes").iterdir())) == 8
    # ... and replaced with --overwrite: only the files gencls wrote there (it lists them)
    proc = gencls_cli("generate", run, "--class", "7", "--n", "2", "--out-dir", tmp_path / "threes", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "threes").iterdir()) == [
        ".gencls-generated.json", "00000_7.png", "00001_7.png", "20240101_123456.png", "notes.txt"]


def test_evaluate_generation_cli_writes_eval_json(runs, small_feature_net):
    path = small_feature_net.info["path"]
    proc = gencls_cli("evaluate", runs["acgan"], "--generation", "--n", "1000", "--cas-epochs", "1",
                      "--feature-net", path)
    assert proc.returncode == 0, proc.stderr
    g = json.loads((runs["acgan"] / "eval.json").read_text())["generation"]
    for key in ("fid", "kid", "kid_std", "classifier_score", "label_consistency", "cas"):
        assert isinstance(g[key], float), key
    assert len(g["label_consistency_per_class"]) == 10 and g["n"] == 1000
    assert "FID" in proc.stdout and "CAS" in proc.stdout
    proc = gencls_cli("evaluate", runs["improved-gan"], "--generation", "--n", "300", "--feature-net", path)
    assert proc.returncode == 0, proc.stderr
    g = json.loads((runs["improved-gan"] / "eval.json").read_text())["generation"]
    assert g["cas"] is None and "not applicable" in proc.stdout
    proc = gencls_cli("evaluate", runs["acgan"], "--n", "10")
    assert proc.returncode != 0 and "--generation" in proc.stderr


def test_acgan_exports_to_onnx_with_spectral_norm_baked_in(runs, tmp_path, mnist_test):
    """Spectral norm's power iteration (torch.vdot) has no ONNX operator: the export bakes the
    normalised weights in; the file matches PyTorch and the caller's model is left as it was."""
    import onnxruntime as ort

    from gencls.export import export_onnx

    run = gencls.load_run(runs["acgan"])
    before = {k: v.clone() for k, v in run.method.state_dict().items()}
    report = export_onnx(run, tmp_path / "acgan.onnx", n_check=200, log=lambda s: None)
    assert report["max_abs_diff"] <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "acgan.onnx"), providers=["CPUExecutionProvider"])
    x = mnist_test.images[7000:7020].float() / 255
    logits, _, _ = sess.run(None, {"image": x.numpy()})
    assert abs(logits - run.logits(x).numpy()).max() < 1e-4
    after = run.method.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    gen = export_onnx(run, tmp_path / "acgan-gen.onnx", part="generator", n_check=32, log=lambda s: None)
    assert gen["max_abs_diff"] <= 1e-4


def test_class_names_with_slashes_become_safe_file_names(runs, tmp_path):
    """Fashion-MNIST's class 0 is "T-shirt/top": generated files must not land in subfolders."""
    run = gencls.load_run(runs["acgan"])
    run.classes = ["T-shirt/top", *run.classes[1:]]
    images = gencls.generate(run, n=2, labels=0, seed=1)
    paths = gencls.write_images(run, images, tmp_path / "out", labels=[0, 0])
    assert [p.name for p in paths] == ["00000_T-shirt_top.png", "00001_T-shirt_top.png"]
    assert all(p.parent == tmp_path / "out" and p.exists() for p in paths)


def test_class_indices_are_indices_where_class_names_are_numbers(runs, tmp_path):
    """A folder of classes 1..10 sorts as "1", "10", "2", ...: index 1 is class "10" (write_images named
    it "1", and generate_per_class generated class "1" for its row "10")."""
    from gencls.api import _labels_tensor

    run = gencls.load_run(runs["acgan"])
    run.classes = ["1", "10", *map(str, range(2, 10))]
    assert _labels_tensor(run, [0, 1, 2], 3).tolist() == [0, 1, 2]
    assert _labels_tensor(run, torch.tensor([1]), 1).tolist() == [1]
    assert _labels_tensor(run, "10", 1).tolist() == [1] and _labels_tensor(run, "1", 1).tolist() == [0]  # names
    images = gencls.generate(run, n=3, labels=[0, 1, 2], seed=1)
    paths = gencls.write_images(run, images, tmp_path / "out", labels=[0, 1, 2])
    assert [p.name for p in paths] == ["00000_1.png", "00001_10.png", "00002_2.png"]


def test_write_images_takes_class_names_and_refuses_a_label_count_that_does_not_fit(runs, tmp_path):
    run = gencls.load_run(runs["acgan"])
    images, rows = gencls.generate_per_class(run, 2, seed=1)
    with pytest.raises(gencls.GenclsError, match="10 labels given for 20 images: give one per image"):
        gencls.write_images(run, images, tmp_path / "a", labels=rows)  # one per row: a ValueError before
    names = [c for c in rows for _ in range(2)]
    paths = gencls.write_images(run, images, tmp_path / "b", labels=names)
    assert [p.name for p in paths[:3]] == [f"00000_{rows[0]}.png", f"00001_{rows[0]}.png", f"00002_{rows[1]}.png"]
    assert gencls.write_images(run, images[:2], tmp_path / "c", labels=rows[3])[1].name == f"00001_{rows[3]}.png"
