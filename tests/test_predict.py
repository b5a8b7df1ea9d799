"""predict on image files gives what classifying the tensors directly gives."""
import json
import subprocess
import sys

import numpy as np
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
