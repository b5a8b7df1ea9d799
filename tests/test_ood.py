"""Out-of-distribution: AUROC and threshold by hand, Fashion-MNIST from Debian's package, calibration
stored in the run, and the score telling MNIST from noise and Fashion-MNIST on a real (small) run."""
import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import gencls
from gencls.api import ood_calibration
from gencls.data import load_split
from gencls.data.sources import (DEBIAN_FASHION_MNIST, FASHION_MNIST_SHA256, fashion_mnist_files_valid,
                                 fashion_mnist_raw_dir, fetch_fashion_mnist)
from gencls.errors import DataUnavailableError
from gencls.evaluation.metrics import auroc, fpr_at_tpr
from gencls.evaluation.ood import calibrate_threshold, conform


def test_auroc_by_hand():
    # pairs (pos, neg): 3>0, 3>2, 2>0, 2=2 (half), 1>0, 1<2 -> 4.5 of 6
    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.0, 2.0])) == pytest.approx(0.75)
    assert auroc(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([5.0, 6.0])) == 0.0
    assert auroc(torch.ones(4), torch.ones(7)) == 0.5
    rng = np.random.default_rng(0)
    a, b = torch.tensor(rng.normal(1, 1, 300)), torch.tensor(rng.normal(0, 1, 200))
    brute = ((a[:, None] > b[None]).double() + 0.5 * (a[:, None] == b[None]).double()).mean()
    assert auroc(a, b) == pytest.approx(float(brute), abs=1e-12)


def test_fpr_at_tpr_and_threshold_by_hand():
    pos = torch.arange(100.0)  # accepts 95%: threshold 5
    neg = torch.tensor([0.0, 4.0, 5.0, 50.0])
    assert fpr_at_tpr(pos, neg, 0.95) == 0.5
    assert calibrate_threshold(torch.arange(101.0), 1.0) == pytest.approx(1.0)
    assert calibrate_threshold(torch.arange(101.0), 50.0) == pytest.approx(50.0)


def test_conform_changes_channels_and_size():
    x = torch.rand(2, 3, 32, 32)
    assert conform(x, (1, 28, 28)).shape == (2, 1, 28, 28)
    assert conform(torch.rand(2, 1, 28, 28), (3, 32, 32)).shape == (2, 3, 32, 32)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed "
                    "(make setup installs it)")
def test_fashion_mnist_from_debian_package_is_verified(tmp_path):
    lines = []
    fetch_fashion_mnist(tmp_path, log=lines.append, sources=("existing", "debian"))
    assert "debian: yes" in lines[-1] and "SHA-256 verified" in lines[-1]
    assert fashion_mnist_files_valid(tmp_path)[0]
    test = load_split("fashion-mnist", "test", tmp_path, log=lines.append)
    train = load_split("fashion-mnist", "train", tmp_path, log=lines.append)
    # the published data: sizes, balance, first labels, class names
    assert test.images.shape == (10000, 1, 28, 28) and train.images.shape == (60000, 1, 28, 28)
    assert test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == [1000] * 10 and torch.bincount(train.labels).tolist() == [6000] * 10
    assert test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.classes[9] == "Ankle boot"
    # a damaged file is caught and replaced from the package on the next load
    (fashion_mnist_raw_dir(tmp_path) / "t10k-labels-idx1-ubyte").write_bytes(b"\0" * 10)
    ok, why = fashion_mnist_files_valid(tmp_path)
    assert not ok and "SHA-256" in why
    assert load_split("fashion-mnist", "test", tmp_path, log=lines.append).labels[:3].tolist() == [9, 2, 1]


def test_fashion_mnist_bad_package_files_are_refused(tmp_path):
    fake = tmp_path / "pkg"
    fake.mkdir()
    for name in FASHION_MNIST_SHA256:
        (fake / f"{name}.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0" * 100))
    from gencls.data.sources import _fashion_from_debian
    with pytest.raises(ValueError, match="SHA-256"):
        _fashion_from_debian(tmp_path / "root", fake)
    assert not (fashion_mnist_raw_dir(tmp_path / "root") / "t10k-labels-idx1-ubyte").exists()


def test_no_fashion_source_names_the_debian_package(tmp_path):
    with pytest.raises(DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        fetch_fashion_mnist(tmp_path, log=lambda s: None, sources=("existing",))


def test_calibration_is_stored_in_the_run_and_reused(gan_run, tmp_path):
    (gan_run / "ood.json").unlink(missing_ok=True)
    run = gencls.load_run(gan_run)
    cal = ood_calibration(run, log=lambda s: None)
    saved = json.loads((gan_run / "ood.json").read_text())
    assert saved["threshold"] == cal["threshold"] and saved["percentile"] == 1.0 and saved["n"] == 500
    assert saved["checkpoint"] == "best.safetensors" and saved["epoch"] == run.meta["epoch"]
    assert saved["score"] == "discriminator D(x) = Z/(Z+1)"
    # about 1% of the validation images are below the threshold, by construction
    data = load_split("mnist", "train", log=lambda s: None)
    val = json.loads((gan_run / "split.json").read_text())
    idx = torch.tensor([val["subset"][i] for i in val["validation"]])
    flagged = (run.ood_scores(data.images[idx].float() / 255) < cal["threshold"]).float().mean()
    assert 0.0 < float(flagged) <= 0.02
    # a fresh load reads the file instead of recomputing
    saved["threshold"] = 0.123456
    (gan_run / "ood.json").write_text(json.dumps(saved))
    assert ood_calibration(gencls.load_run(gan_run))["threshold"] == 0.123456
    (gan_run / "ood.json").unlink()


def test_predict_reports_ood_score_and_flag(gan_run, mnist_test, tmp_path):
    from PIL import Image
    Image.fromarray(mnist_test.images[0, 0].numpy()).save(tmp_path / "digit.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / "noise.png")
    results = gencls.predict(gan_run, [tmp_path / "digit.png", tmp_path / "noise.png"])
    assert [r.path.rsplit("/", 1)[-1] for r in results] == ["digit.png", "noise.png"]
    digit, noise = results
    assert digit.ood_flag is False and noise.ood_flag is True and digit.ood_score > noise.ood_score
    proc = subprocess.run([sys.executable, "-m", "gencls", "predict", str(gan_run), str(tmp_path / "noise.png"),
                           "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)[0]
    assert row["ood_flag"] is True and 0 <= row["ood_score"] <= 1


def test_evaluate_ood_auroc_mnist_vs_noise_and_fashion(gan_run, sup_run):
    proc = subprocess.run([sys.executable, "-m", "gencls", "evaluate", str(gan_run), "--ood", "noise", "--ood",
                           "fashion-mnist"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "test vs noise" in proc.stdout and "AUROC" in proc.stdout
    report = json.loads((gan_run / "eval.json").read_text())
    noise, fashion = report["ood"]["noise"], report["ood"]["fashion-mnist"]
    assert noise["n_in"] == 10000 and noise["n_out"] == 10000 and fashion["n_out"] == 10000
    assert noise["auroc"] > 0.95  # the discriminator has seen MNIST: uniform noise is nothing like it
    assert fashion["auroc"] > 0.6
    assert 0.0 < noise["flagged_in"] < 0.05 and noise["flagged_out"] > 0.9
    # evaluating again without --ood keeps the OOD results of the same checkpoint
    gencls.evaluate(gan_run, log=lambda s: None)
    assert json.loads((gan_run / "eval.json").read_text())["ood"]["noise"]["auroc"] == noise["auroc"]
    # every method has a score: the supervised baseline's is the maximum softmax probability
    r = gencls.evaluate(sup_run, ood=("noise",), log=lambda s: None)
    assert r["ood"]["noise"]["score"] == "maximum softmax probability" and 0.0 <= r["ood"]["noise"]["auroc"] <= 1.0
    # the run's own dataset as the "other" set: measured (0.5) but said to be no OOD test
    lines = []
    r = gencls.evaluate(sup_run, ood=("mnist",), write=False, log=lines.append)
    assert any("own dataset" in s for s in lines) and abs(r["ood"]["mnist"]["auroc"] - 0.5) < 0.01


def test_unknown_ood_set_is_a_user_error(gan_run):
    proc = subprocess.run([sys.executable, "-m", "gencls", "evaluate", str(gan_run), "--ood", "shoes"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "--ood shoes" in proc.stderr and "Traceback" not in proc.stderr


def test_classification_report_by_hand():
    """Rows of the confusion matrix are true classes; a class absent from the split has no accuracy."""
    from gencls.evaluation.metrics import classification_report

    y = torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0]])
    r = classification_report(y, logits, ["a", "b", "c"])
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert r["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": None}
    assert r["error_percent"] == pytest.approx(25.0)
    p = torch.softmax(logits, 1)[torch.arange(4), y]
    assert r["nll"] == pytest.approx(float(-p.log().mean()), rel=1e-6)
