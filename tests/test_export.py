"""ONNX export: one self-contained file, dynamic batch, same numbers as PyTorch, and predict --onnx
running on ONNX Runtime with PyTorch unavailable."""
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import gencls
from gencls.errors import GenclsError
from gencls.export import export_onnx


@pytest.fixture(scope="module")
def exported(gan_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    proc = subprocess.run([sys.executable, "-m", "gencls", "export", str(gan_run), "--format", "onnx", "--out",
                           str(out / "model.onnx"), "--check", "300"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "max abs diff" in proc.stdout
    return out / "model.onnx", proc.stdout


def test_classifier_matches_pytorch_at_any_batch_size(gan_run, exported, mnist_test):
    path, stdout = exported
    diff = float(stdout.split("max abs diff ")[1].split()[0])
    assert diff <= 1e-4
    model = onnx.load(str(path))
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    meta = json.loads({p.key: p.value for p in model.metadata_props}["gencls"])
    run = gencls.load_run(gan_run)
    assert meta["classes"] == run.classes and meta["part"] == "classifier"
    assert meta["ood"]["threshold"] == pytest.approx(run.ood["threshold"] if run.ood else
                                                     gencls.api.ood_calibration(run)["threshold"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "probabilities", "ood_score"]
    for n in (1, 37):  # images the export check did not use
        x = mnist_test.images[5000 : 5000 + n].float() / 255
        logits, probs, scores = sess.run(None, {"image": x.numpy()})
        assert logits.shape == (n, 10) and scores.shape == (n,)
        assert np.abs(logits - run.logits(x).numpy()).max() < 1e-4
        assert np.abs(scores - run.ood_scores(x).numpy()).max() < 1e-4
        assert np.allclose(probs.sum(1), 1, atol=1e-5)


def test_generator_export_matches_pytorch(gan_run, tmp_path):
    report = export_onnx(gan_run, tmp_path / "gen.onnx", part="generator", n_check=64, log=lambda s: None)
    assert report["max_abs_diff"] <= 1e-4
    run = gencls.load_run(gan_run)
    sess = ort.InferenceSession(str(tmp_path / "gen.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["gencls"])
    assert meta["latent_distribution"] == "uniform(0,1)" and meta["latent_dim"] == 100
    z = run.method.sample_latent(5, torch.Generator().manual_seed(3))
    (images,) = sess.run(None, {"z": z.numpy()})
    assert images.shape == (5, 1, 28, 28)
    assert np.abs(images - run.method.decode_latent(z).numpy()).max() < 1e-4


def test_export_refuses_a_generator_that_does_not_exist(sup_run, tmp_path):
    with pytest.raises(GenclsError, match="no generator"):
        export_onnx(sup_run, tmp_path / "g.onnx", part="generator", log=lambda s: None)
    assert not (tmp_path / "g.onnx").exists()


def test_export_fails_above_tolerance_and_writes_nothing(gan_run, tmp_path):
    with pytest.raises(GenclsError, match="differs from PyTorch"):
        export_onnx(gan_run, tmp_path / "m.onnx", n_check=20, tolerance=0.0 - 1.0, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


NO_TORCH = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "from gencls.cli import main\n"
            "code = main(sys.argv[1:])\n"
            "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
            "sys.exit(code)\n")


def test_predict_onnx_runs_without_pytorch(exported, gan_run, mnist_test, tmp_path):
    path, _ = exported
    for i in range(4):
        Image.fromarray(mnist_test.images[i, 0].numpy()).save(tmp_path / f"d{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, "predict", "--onnx", str(path), str(tmp_path),
                           "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr  # one unreadable file
    rows = json.loads(proc.stdout)
    assert "1 of 5 files could not be read" in proc.stderr and "Traceback" not in proc.stderr
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert by_name["broken.png"]["error"]
    # the same answers as the PyTorch path
    torch_rows = {r.path.rsplit("/", 1)[-1]: r for r in gencls.predict(gan_run, [tmp_path / f"d{i}.png" for i in range(4)])}
    for name, r in torch_rows.items():
        assert by_name[name]["class"] == r.label and by_name[name]["ood_flag"] == r.ood_flag
        assert abs(by_name[name]["probability"] - r.probability) < 1e-4
        assert abs(by_name[name]["ood_score"] - r.ood_score) < 1e-4


def test_predict_onnx_rejects_files_that_are_not_gencls_models(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "gencls", "predict", "--onnx", str(tmp_path / "x.onnx"), "a.png"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "not a readable ONNX model" in proc.stderr and "Traceback" not in proc.stderr
