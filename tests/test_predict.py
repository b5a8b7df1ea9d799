"""predict on image files gives what classifying the tensors directly gives."""
import json
import subprocess
import sys

import numpy as np
import torch
import pytest
from PIL import Image

import gencls


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("runs") / "sup"
    gencls.train(gencls.TrainConfig(method="supervised", labels=1000, val_size=500, subset=3000, epochs=2,
                                    out=str(out), progress=False, tensorboard=False, device="cpu"))
    return out


def write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        p = folder / f"img_{i:03d}.png"
        Image.fromarray(img[0].numpy()).save(p)
        paths.append(p)
    return paths


def test_png_files_classify_like_tensors(trained_run, mnist_test, tmp_path):
    images = mnist_test.images[:64]
    paths = write_pngs(tmp_path / "pngs", images)
    run = gencls.load_run(trained_run)
    direct = run.predict_classes(images.float() / 255)
    results = gencls.predict(run, [tmp_path / "pngs"], top_k=3)
    assert [r.path for r in results] == [str(p) for p in paths]
    assert [r.label for r in results] == direct
    assert all(len(r.top_k) == 3 and r.top_k[0][0] == r.label for r in results)
    # and they are mostly right
    acc = np.mean([r.label == str(int(y)) for r, y in zip(results, mnist_test.labels[:64])])
    assert acc > 0.8


def test_other_formats_and_sizes_are_converted(trained_run, mnist_test, tmp_path):
    img = mnist_test.images[0, 0].numpy()
    rgb = Image.fromarray(img).convert("RGB").resize((56, 56))
    rgb.save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(255 - img).save(tmp_path / "inverted.bmp")  # dark digit on white paper
    results = gencls.predict(trained_run, [tmp_path / "big.jpg", tmp_path / "inverted.bmp"])
    assert [r.label for r in results] == ["7", "7"]


def test_cli_predict_reports_bad_files_and_goes_on(trained_run, mnist_test, tmp_path):
    write_pngs(tmp_path / "mix", mnist_test.images[:3])
    (tmp_path / "mix" / "broken.png").write_bytes(b"this is not a png")
    (tmp_path / "mix" / "empty.png").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "gencls", "predict", str(trained_run), str(tmp_path / "mix"),
                           "--format", "json"], capture_output=True, text=True)
    assert proc.returncode != 0
    rows = json.loads(proc.stdout)
    assert len(rows) == 5
    bad = [r for r in rows if r["error"]]
    assert {r["path"].rsplit("/", 1)[-1] for r in bad} == {"broken.png", "empty.png"}
    assert all(r["class"] is not None for r in rows if not r["error"])
    assert "2 of 5 files could not be read" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_predict_table_and_csv(trained_run, mnist_test, tmp_path):
    write_pngs(tmp_path / "ok", mnist_test.images[:2])
    for fmt in ("table", "csv"):
        proc = subprocess.run([sys.executable, "-m", "gencls", "predict", str(trained_run), str(tmp_path / "ok"),
                               "--format", fmt, "--top-k", "2"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "img_000.png" in proc.stdout and "img_001.png" in proc.stdout


def test_generate_and_evaluate_cli(trained_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gencls", "generate", str(trained_run), "--out", str(tmp_path / "g.png")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "cannot generate" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "gencls", "evaluate", str(trained_run)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((trained_run / "eval.json").read_text())
    assert report["split"] == "test" and report["n"] == 10000 and len(report["per_class_accuracy"]) == 10
    assert "error" in proc.stdout and (trained_run / "confusion.png").exists()


def test_a_run_folder_predicts_where_its_training_data_is_not(tmp_path, mnist_test):
    """Training writes ood.json, so a run folder copied to another machine flags out-of-distribution
    inputs without its training data; without ood.json it still classifies (no threshold)."""
    import shutil

    data = tmp_path / "data"
    for c in (0, 1, 2):
        write_pngs(data / "labelled" / str(c), mnist_test.images[mnist_test.labels == c][:40])
    run_dir = gencls.train(gencls.TrainConfig(method="supervised", dataset=f"folder:{data}", epochs=2, batch_size=20,
                                              out=str(tmp_path / "run"), progress=False, tensorboard=False,
                                              device="cpu", sample_every=0), log=lambda s: None)
    cal = json.loads((run_dir / "ood.json").read_text())
    assert isinstance(cal["threshold"], float) and cal["epoch"] == gencls.load_run(run_dir).meta["epoch"]
    shipped = shutil.copytree(run_dir, tmp_path / "shipped")
    data.rename(tmp_path / "moved")
    img = write_pngs(tmp_path / "img", mnist_test.images[mnist_test.labels == 1][:1])[0]
    (p,) = gencls.predict(shipped, [img])
    assert p.error is None and p.ood_flag is not None and p.label in ("0", "1", "2")
    (shipped / "ood.json").unlink()  # e.g. a run trained before ood.json was written at the end
    proc = subprocess.run([sys.executable, "-m", "gencls", "predict", str(shipped), str(img)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no threshold: not calibrated" in proc.stdout and "training data" in proc.stderr


def test_a_bare_checkpoint_file_predicts_exports_and_evaluates(trained_run, tmp_path, mnist_test):
    """A checkpoint outside its run folder has no validation split: everything works, nothing is flagged."""
    import onnxruntime  # noqa: F401
    from fastapi.testclient import TestClient

    from gencls.export import export_onnx
    from gencls.onnx_runtime import OnnxClassifier
    from gencls.server import create_app

    bare = tmp_path / "bare" / "model.safetensors"
    bare.parent.mkdir()
    bare.write_bytes((trained_run / "checkpoints" / "best.safetensors").read_bytes())
    run = gencls.load_run(bare)
    cal = gencls.api.ood_calibration(run)
    assert cal["threshold"] is None and cal["score"] == run.method.ood_score_name
    img = write_pngs(tmp_path / "img", mnist_test.images[:2])
    r = gencls.evaluate(run, ood=["noise"], log=lambda s: None)
    assert r["ood"]["noise"]["flagged_in"] is None and 0 <= r["ood"]["noise"]["auroc"] <= 1
    export_onnx(run, tmp_path / "bare.onnx", n_check=50, log=lambda s: None)
    preds = OnnxClassifier(tmp_path / "bare.onnx").predict(img)
    assert all(p.error is None and p.ood_flag is None for p in preds)
    with TestClient(create_app(run)) as c:
        resp = c.post("/predict", files=[("files", ("a.png", img[0].read_bytes(), "image/png"))])
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["ood_threshold"] is None and body["predictions"][0]["ood_flag"] is None
        assert c.get("/model").json()["ood"]["threshold"] is None


def test_evaluate_into_a_folder_it_cannot_write_still_reports(trained_run, tmp_path):
    import shutil

    ro = shutil.copytree(trained_run, tmp_path / "ro")
    (ro / "eval.json").unlink(missing_ok=True)
    (ro / "eval.json").mkdir()  # stands in for a read-only folder (the tests run as root)
    notes = []
    r = gencls.evaluate(ro, log=notes.append)
    assert r["n"] == 10000 and 0 <= r["error_percent"] <= 100
    assert any("could not write" in n for n in notes)


def test_evaluating_validation_rows_of_a_changed_folder_is_refused(tmp_path, mnist_test):
    """split.json keeps row positions: after files are added to the folder they point elsewhere."""
    data = tmp_path / "data"
    for c in (0, 1):
        write_pngs(data / "labelled" / str(c), mnist_test.images[mnist_test.labels == c][:40])
    run_dir = gencls.train(gencls.TrainConfig(method="supervised", dataset=f"folder:{data}", epochs=1, batch_size=20,
                                              val_size=10, out=str(tmp_path / "run"), progress=False,
                                              tensorboard=False, device="cpu", sample_every=0), log=lambda s: None)
    assert len(json.loads((run_dir / "split.json").read_text())["fingerprint"]) == 64
    before = gencls.evaluate(run_dir, split="val", write=False, log=lambda s: None)
    assert before["n"] == 10
    Image.fromarray(mnist_test.images[mnist_test.labels == 0][50][0].numpy()).save(data / "labelled" / "0" / "a.png")
    with pytest.raises(gencls.api.DataChanged, match="changed since this run was trained"):
        gencls.evaluate(run_dir, split="val", write=False, log=lambda s: None)
    cfg = gencls.TrainConfig.from_dict({**json.loads((run_dir / "config.json").read_text()), "epochs": 2})
    with pytest.raises(gencls.GenclsError, match="changed since the run started"):
        gencls.train(cfg, resume=True, log=lambda s: None)
    (run_dir / "ood.json").unlink()
    notes = []
    cal = gencls.api.ood_calibration(gencls.load_run(run_dir), log=notes.append)
    assert cal["threshold"] is None and any("changed since" in n for n in notes)


def test_evaluate_cli_into_a_folder_it_cannot_write_does_not_say_it_wrote(tmp_path, data_root, capsys):
    from gencls.cli import main

    run = gencls.train(gencls.TrainConfig(method="supervised", dataset="digits", epochs=1, out=str(tmp_path / "run"),
                                          progress=False, tensorboard=False, device="cpu", sample_every=0, threads=1),
                       log=lambda s: None)
    (run / "eval.json").mkdir()  # stands in for a read-only folder (the tests run as root)
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "could not write" in out and "wrote" not in out.replace("could not write", ""), out
    (run / "eval.json").rmdir()
    assert main(["evaluate", str(run)]) == 0
    assert f"wrote {run / 'eval.json'}" in capsys.readouterr().out
    assert main(["evaluate", str(run)]) == 0  # written again over the first
    assert f"wrote {run / 'eval.json'}" in capsys.readouterr().out


def test_tensors_outside_the_models_range_are_refused_not_classified(trained_run, mnist_test):
    """The API takes images in [0, 1]: uint8 pixels are divided by 255 (same answers as the floats);
    0-255 floats, normalised images, NaN or integer tensors are refused in one line (they were
    classified, wrongly and silently)."""
    run = gencls.load_run(trained_run)
    x8 = mnist_test.images[:32]
    assert torch.equal(run.logits(x8), run.logits(x8.float() / 255))
    for bad, needle in [(x8.float(), "values from 0 to 255"), ((x8.float() / 255 - 0.13) / 0.31, "values from -0.4"),
                        (torch.full((1, 1, 28, 28), float("nan")), "values from nan"),
                        (x8.long(), "dtype torch.int64"), (x8[0, 0].numpy(), "must be a torch.Tensor")]:
        with pytest.raises(gencls.InputError, match=needle):
            run.predict_proba(bad)


def test_evaluating_another_checkpoint_leaves_the_best_ones_results(trained_run, tmp_path):
    """`evaluate RUN/checkpoints/last.safetensors` writes eval_last.json (it replaced eval.json, the
    best checkpoint's results that report and serve read, with their OOD and generation figures)."""
    import shutil

    from gencls.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    gencls.evaluate(run, ood=["noise"], log=lambda s: None)
    best = json.loads((run / "eval.json").read_text())
    assert main(["evaluate", str(run / "checkpoints" / "last.safetensors")]) == 0
    assert json.loads((run / "eval.json").read_text()) == best
    last = json.loads((run / "eval_last.json").read_text())
    assert last["checkpoint_epoch"] == 2 and (run / "confusion_last.png").exists()
    assert main(["evaluate", str(run / "checkpoints" / "last.safetensors"), "--split", "val"]) == 0
    assert (run / "eval_val_last.json").exists()
