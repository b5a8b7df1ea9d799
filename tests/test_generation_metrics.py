"""The generation metrics mean what they say, measured on real MNIST with a (small) feature network."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from gencls.errors import GenclsError
from gencls.evaluation import featurenet
from gencls.evaluation.generation import classifier_score, fid_kid, generation_report, label_consistency
from gencls.methods import create_method


def test_feature_net_is_cached_with_checksum_and_accuracy(small_feature_net, data_root):
    info = small_feature_net.info
    assert info["test_accuracy"] > 0.95, info  # 5000 images, 2 epochs; the full recipe reaches >= 99.3%
    assert len(info["sha256"]) == 64 and info["train_images"] == 5000
    path = featurenet.Path(info["path"])
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["sha256"] == featurenet.sha256_file(path) and on_disk["test_accuracy"] == info["test_accuracy"]
    # asked again: reused, not trained again
    again = featurenet.prepare("mnist", data_root, cache_dir=path.parent, log=lambda s: None, subset=5000, epochs=2,
                                min_steps=0)
    assert again["cached"] and again["sha256"] == info["sha256"]


def test_corrupt_feature_net_is_refused(small_feature_net, tmp_path):
    src = featurenet.Path(small_feature_net.info["path"])
    bad = tmp_path / src.name
    blob = bytearray(src.read_bytes())
    blob[-1] ^= 0xFF
    bad.write_bytes(bytes(blob))
    bad.with_suffix(".json").write_text(src.with_suffix(".json").read_text())
    with pytest.raises(GenclsError, match="checksum"):
        featurenet.load_path(bad)
    with pytest.raises(GenclsError, match="no feature network"):
        featurenet.load_path(tmp_path / "missing.safetensors")


def test_fid_and_kid_separate_real_from_noise_and_blur(small_feature_net, mnist_test):
    x = mnist_test.images[:2000].float() / 255
    a, b = x[:1000], x[1000:]
    noise = torch.rand(b.shape, generator=torch.Generator().manual_seed(0))
    blurred = F.avg_pool2d(F.pad(b, (3, 3, 3, 3), mode="replicate"), 7, stride=1)  # 7x7 box blur
    halves = fid_kid(small_feature_net, a, b)
    vs_noise = fid_kid(small_feature_net, a, noise)
    vs_blur = fid_kid(small_feature_net, a, blurred)
    assert halves["fid"] * 10 < vs_blur["fid"] < vs_noise["fid"], (halves, vs_blur, vs_noise)
    assert abs(halves["kid"]) * 10 < vs_blur["kid"] < vs_noise["kid"], (halves, vs_blur, vs_noise)


def test_label_consistency_of_real_images_is_the_feature_nets_accuracy(small_feature_net, data_root):
    feats, labels = featurenet.real_features(small_feature_net, "mnist", data_root, log=lambda s: None)
    pred = small_feature_net.logits_from_features(feats).argmax(1)
    lc = label_consistency(pred, labels, [str(i) for i in range(10)])
    assert lc["label_consistency"] == pytest.approx(small_feature_net.info["test_accuracy"], abs=1e-9)
    per = lc["label_consistency_per_class"]
    counts = torch.bincount(labels, minlength=10)
    assert sum(per[str(c)] * counts[c].item() for c in range(10)) / len(labels) == pytest.approx(lc["label_consistency"])


def test_classifier_score_by_hand():
    k = 4
    confident_balanced = torch.eye(k).repeat(5, 1) * 50  # each image surely one class, classes used equally
    assert classifier_score(confident_balanced, splits=1)[0] == pytest.approx(k, rel=1e-4)
    assert classifier_score(torch.zeros(20, k), splits=1)[0] == pytest.approx(1.0)
    # two images, p = (0.5, 0.5) and (1, 0) -> p(y) = (0.75, 0.25)
    logits = torch.tensor([[0.0, 0.0], [50.0, 0.0]])
    kl = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + 0.5 * math.log(1 / 0.75)
    assert classifier_score(logits, splits=1)[0] == pytest.approx(math.exp(kl), rel=1e-5)


def test_generation_report_is_deterministic_for_a_seed(small_feature_net, data_root):
    torch.manual_seed(0)
    m = create_method("acgan", {}, (1, 28, 28), 10).eval()
    classes = [str(i) for i in range(10)]

    def report(seed):
        return generation_report(m, classes, small_feature_net, "mnist", data_root, n=600, seed=seed, cas_epochs=1,
                                 log=lambda s: None)

    r1, r2, r3 = report(0), report(0), report(1)
    assert r1 == r2
    assert r1["fid"] != r3["fid"]
    for key in ("fid", "kid", "classifier_score", "label_consistency", "cas"):
        assert math.isfinite(r1[key])
    assert set(r1["label_consistency_per_class"]) == set(classes)
    # an untrained generator's images are nothing like digits
    assert r1["fid"] > 10 * fid_kid(small_feature_net, *(featurenet.real_features(
        small_feature_net, "mnist", data_root)[0].split(5000)))["fid"]


def test_unconditional_method_reports_not_applicable(small_feature_net, data_root):
    torch.manual_seed(0)
    m = create_method("improved-gan", {}, (1, 28, 28), 10).eval()
    r = generation_report(m, [str(i) for i in range(10)], small_feature_net, "mnist", data_root, n=200,
                          log=lambda s: None)
    assert r["cas"] is None and r["label_consistency"] is None
    assert "not applicable" in r["not_applicable"]["cas"]
    assert math.isfinite(r["fid"]) and r["classifier_score"] >= 1.0


def test_small_datasets_train_the_feature_net_for_a_minimum_of_steps():
    """digits (1,438 training images) is 12 steps an epoch: its 4 epochs were 48 steps (77 % test
    accuracy); the recipe's min_steps makes it about 1,000 steps (99.7 %). MNIST keeps its 4 epochs."""
    r = featurenet.RECIPE
    assert featurenet.training_epochs(60000, r["epochs"], r["batch_size"], r["min_steps"]) == 4
    assert featurenet.training_epochs(1438, r["epochs"], r["batch_size"], r["min_steps"]) == 84
    assert featurenet.training_epochs(100, r["epochs"], r["batch_size"], r["min_steps"]) == 1000
    # a cached network of the old schedule is trained again only where the schedule differs
    old = {k: v for k, v in r.items() if k != "min_steps"}
    assert featurenet._schedule(old, 60000) == featurenet._schedule(r, 60000)
    assert featurenet._schedule(old, 1438) != featurenet._schedule(r, 1438)


def test_a_run_at_another_shape_gets_a_feature_net_of_its_own(tmp_path):
    assert featurenet.net_path("mnist", tmp_path).name == "mnist-cnn-v1.safetensors"
    assert featurenet.net_path("mnist", tmp_path, image_shape=(1, 28, 28)).name == "mnist-cnn-v1.safetensors"
    assert featurenet.net_path("mnist", tmp_path, image_shape=(3, 32, 32)).name == "mnist-3x32x32-cnn-v1.safetensors"
    assert featurenet.data_shape("mnist", tmp_path, image_size=32, channels=3) == (3, 32, 32)
    assert featurenet.data_shape("cifar10", tmp_path, channels=1) == (1, 32, 32)
    folder = featurenet.net_path(f"folder:{tmp_path}/my photos", tmp_path, image_shape=(3, 64, 64), folder_test_rule=2)
    assert folder.parent == tmp_path / "feature_nets" and folder.name.startswith("folder-my-photos-")
    assert folder.name.endswith("-3x64x64-rule2-cnn-v1.safetensors")


def test_a_feature_net_of_another_shape_is_refused(small_feature_net, data_root):
    torch.manual_seed(0)
    m = create_method("improved-gan", {}, (1, 32, 32), 10).eval()
    with pytest.raises(GenclsError, match="makes 1x32x32 images, the feature network takes 1x28x28"):
        generation_report(m, [str(i) for i in range(10)], small_feature_net, "mnist", data_root, n=50,
                          image_size=32, log=lambda s: None)


def test_a_data_root_that_cannot_be_written_still_measures(tmp_path, data_root, monkeypatch, capsys):
    """The feature network trained for a read-only data root is used uncached (and said so), not lost
    with the evaluation; `metrics prepare`, whose only job is the cache, fails in one line."""
    from gencls.cli import main

    def refuse(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(featurenet, "atomic_write_bytes", refuse)
    monkeypatch.setattr(featurenet, "atomic_write_json", refuse)
    lines = []
    fnet = featurenet.load("digits", data_root, cache_dir=tmp_path / "ro", log=lines.append, epochs=1, min_steps=0)
    assert any("NOT cached" in s and "writable --data-root" in s for s in lines), lines
    assert 0 <= fnet.info["test_accuracy"] <= 1 and not (tmp_path / "ro").exists()
    feats, labels = featurenet.real_features(fnet, "digits", data_root, log=lambda s: None)
    assert feats.shape == (359, fnet.info["num_features"]) and len(labels) == 359
    monkeypatch.setattr(featurenet, "RECIPE", {**featurenet.RECIPE, "epochs": 1, "min_steps": 0})
    assert main(["metrics", "prepare", "--dataset", "digits", "--data-root", str(tmp_path / "ro2")]) == 2
    assert "could not be written" in capsys.readouterr().err


def test_two_processes_asking_for_one_feature_net_train_it_once(tmp_path, data_root):
    """A second process waits for the one training the network and reads what it cached (two at once
    used to train it twice and could leave the .json of one with the .safetensors of the other)."""
    import subprocess
    import sys

    go = tmp_path / "go"
    code = ("import json, os, sys, time; from gencls.evaluation import featurenet\n"
            f"while sys.argv[1] == 'second' and not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
            f"info = featurenet.prepare('digits', {str(data_root)!r}, cache_dir={str(tmp_path)!r}, epochs=1, "
            "min_steps=300, log=lambda s: print(s, flush=True))\n"
            "print('INFO', json.dumps({'sha256': info['sha256'], 'cached': info['cached']}), flush=True)\n")
    # the second process is started (its imports done) before the first trains, and asks the moment
    # the first says it is training: the first's ~300 steps are the margin, not the imports' time
    second = subprocess.Popen([sys.executable, "-c", code, "second"], stdout=subprocess.PIPE, text=True)
    first = subprocess.Popen([sys.executable, "-c", code, "first"], stdout=subprocess.PIPE, text=True)
    for line in first.stdout:  # until it is training
        if line.startswith("training the digits feature network"):
            break
    go.touch()
    out2 = second.communicate(timeout=300)[0]
    rest = first.communicate(timeout=300)[0]
    assert first.returncode == 0 and second.returncode == 0, out2
    assert f"waiting for another gencls process (pid {first.pid})" in out2, out2
    assert "training the digits feature network" not in out2  # it read the cache
    a = json.loads(rest.split("INFO ", 1)[1])
    b = json.loads(out2.split("INFO ", 1)[1])
    assert a["sha256"] == b["sha256"] and not a["cached"] and b["cached"]
    (net,) = tmp_path.glob("digits-*.safetensors")
    assert json.loads(net.with_suffix(".json").read_text())["sha256"] == featurenet.sha256_file(net) == a["sha256"]
    assert not list(tmp_path.glob(".*.lock"))  # the lock file goes with its last holder


def test_a_plain_evaluate_keeps_the_earlier_generation_results(gan_run, small_feature_net, tmp_path):
    """`evaluate --generation` then `evaluate`: eval.json keeps the generation metrics of the same
    checkpoint (they were dropped, and cost minutes to measure again), as it keeps OOD results."""
    import shutil

    import gencls

    run = tmp_path / "run"
    shutil.copytree(gan_run, run)
    first = gencls.evaluate(run, generation=True, n=100, cas_epochs=1, feature_net=small_feature_net,
                            log=lambda s: None)
    gencls.evaluate(run, log=lambda s: None)
    saved = json.loads((run / "eval.json").read_text())
    assert saved["generation"] == json.loads(json.dumps(first["generation"]))
