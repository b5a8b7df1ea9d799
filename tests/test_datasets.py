"""digits, CIFAR-10 and SVHN (on small files in their real on-disk formats), Fashion-MNIST's source order,
and the networks for 32x32 colour images."""
import json
import pickle
import socket

import numpy as np
import pytest
import torch

import gencls
from gencls.data import load_split
from gencls.data.sources import (CIFAR10_DIR, DEBIAN_FASHION_MNIST, fashion_mnist_files_valid, fetch_fashion_mnist,
                                 svhn_dir)
from gencls.errors import DataUnavailableError, GenclsError

QUIET = dict(progress=False, tensorboard=False, sample_every=0, device="cpu", threads=1)


@pytest.fixture
def offline(monkeypatch):
    """No network: every name lookup fails at once (what a machine without internet sees)."""
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "offline (test)")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)


# --- digits ---------------------------------------------------------------------------------

def test_digits_fixed_split():
    train, test = load_split("digits", "train", log=lambda s: None), load_split("digits", "test", log=lambda s: None)
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert torch.bincount(test.labels).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    again = load_split("digits", "test", log=lambda s: None)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


@pytest.mark.parametrize("method", ["supervised", "improved-gan"])
def test_digits_training_lowers_validation_error(tmp_path, method):
    out = gencls.train(method=method, dataset="digits", labels=100, epochs=4, out=str(tmp_path / "run"), **QUIET)
    errors = [json.loads(line)["val_error"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["val_size"] == 143 and cfg["image_size"] == [8, 8] and cfg["channels"] == 1  # 10% of 1438
    assert errors[-1] < errors[0] and min(errors) < 0.2, errors  # chance is 0.9; measured ~0.08-0.09 after 4-5 epochs
    report = gencls.evaluate(out, log=lambda s: None)
    assert report["n"] == 359 and report["error"] < 0.25


# --- CIFAR-10 and SVHN in their real formats -------------------------------------------------

def _images(n, seed):
    """Class-coloured noise: class k is brighter in channel k % 3, so the labels are learnable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.integers(0, 120, size=(n, 3, 32, 32))
    for i, k in enumerate(y):
        x[i, k % 3] += 60 + 12 * k
    return x.astype(np.uint8), y


def write_cifar10(root, n_batch=20, n_test=20):
    """The python version: pickled dicts (protocol 2, as the original Python 2 files) with 'data' uint8
    (N, 3072), rows in channel-major order, and 'labels' a list of ints; batches.meta with 'label_names'."""
    folder = root / CIFAR10_DIR
    folder.mkdir(parents=True)
    expected = {}
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        x, y = _images(n_test if name == "test_batch" else n_batch, seed=i)
        d = {"batch_label": f"synthetic {name}", "labels": y.tolist(), "data": x.reshape(len(x), 3072),
             "filenames": [f"img_{j}.png" for j in range(len(x))]}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
        expected[name] = (x, y)
    meta = {"num_cases_per_batch": n_batch, "num_vis": 3072,
            "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return expected


def write_svhn(root, n_train=60, n_test=20):
    """``*_32x32.mat``: X (32, 32, 3, N) uint8 and y (N, 1) with labels 1..10, 10 meaning the digit 0."""
    from scipy.io import savemat

    folder = svhn_dir(root)
    folder.mkdir(parents=True)
    out = {}
    for split, n, seed in (("train", n_train, 10), ("test", n_test, 11)):
        x, y = _images(n, seed)
        y_mat = np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)
        savemat(str(folder / f"{split}_32x32.mat"), {"X": x.transpose(2, 3, 1, 0), "y": y_mat})
        out[split] = (x, y)
    return out


def test_cifar10_python_batches_are_read_without_pickle_load(tmp_path):
    expected = write_cifar10(tmp_path)
    lines = []
    train = load_split("cifar10", "train", tmp_path, log=lines.append)
    test = load_split("cifar10", "test", tmp_path, log=lines.append)
    x = np.concatenate([expected[f"data_batch_{b}"][0] for b in range(1, 6)])
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images.numpy(), x) and np.array_equal(test.images.numpy(), expected["test_batch"][0])
    assert train.labels.tolist() == np.concatenate([expected[f"data_batch_{b}"][1] for b in range(1, 6)]).tolist()
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    assert any("differ from the published CIFAR-10" in s for s in lines)


def test_cifar10_batch_with_code_is_refused(tmp_path):
    write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    (tmp_path / CIFAR10_DIR / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
    with pytest.raises(GenclsError, match="not a CIFAR-10 python batch"):
        load_split("cifar10", "test", tmp_path, log=lambda s: None)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "not a dict"])
def test_damaged_cifar10_batches_meta_is_one_error_naming_it(tmp_path, damage):
    write_cifar10(tmp_path)
    meta = tmp_path / CIFAR10_DIR / "batches.meta"
    good = meta.read_bytes()
    meta.write_bytes({"garbage": b"\x80\x02garbage, not a pickle" * 3, "truncated": good[: len(good) // 2],
                      "empty": b"", "not a dict": pickle.dumps([1, 2, 3], protocol=2)}[damage])
    with pytest.raises(GenclsError) as e:
        load_split("cifar10", "test", tmp_path, log=lambda s: None)
    msg = str(e.value)
    assert str(meta) in msg and "not CIFAR-10's batches.meta" in msg and "\n" not in msg, msg


def test_cifar10_batch_with_a_negative_label_is_refused(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / CIFAR10_DIR / "test_batch"
    d = pickle.loads(batch.read_bytes())
    d["labels"][3] = -1
    batch.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(GenclsError, match="test_batch: CIFAR-10 labels must be 0..9, found -1"):
        load_split("cifar10", "test", tmp_path, log=lambda s: None)


@pytest.mark.parametrize("damage", ["empty", "truncated", "text"])
def test_damaged_svhn_mat_is_one_error_naming_it(tmp_path, damage):
    write_svhn(tmp_path)
    mat = svhn_dir(tmp_path) / "test_32x32.mat"
    good = mat.read_bytes()
    mat.write_bytes({"empty": b"", "truncated": good[: len(good) // 3], "text": b"not a mat file\n" * 20}[damage])
    with pytest.raises(GenclsError) as e:
        load_split("svhn", "test", tmp_path, log=lambda s: None)
    msg = str(e.value)
    assert str(mat) in msg and "not an SVHN .mat file" in msg and "\n" not in msg, msg


def test_svhn_mat_files(tmp_path):
    expected = write_svhn(tmp_path)
    train = load_split("svhn", "train", tmp_path, log=lambda s: None)
    assert train.images.shape == (60, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), expected["train"][0])  # (32, 32, 3, N) -> (N, 3, 32, 32)
    assert train.labels.tolist() == expected["train"][1].tolist() and 0 in train.labels.tolist()  # 10 -> 0
    assert len(load_split("svhn", "test", tmp_path, log=lambda s: None)) == 20


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_offline_without_files_says_where_to_put_them(tmp_path, offline, name):
    with pytest.raises(DataUnavailableError) as e:
        load_split(name, "train", tmp_path, log=lambda s: None)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert ("data_batch_1" in msg and "cifar-10-batches-py" in msg) if name == "cifar10" else "train_32x32.mat" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no empty folder left by the failed download


@pytest.mark.parametrize("method,settings", [
    ("improved-gan", {"conv_width": 16, "g_width": 16}),
    ("supervised", {"conv_width": 16}),
    ("acgan", {"g_width": 16, "d_width": 16, "features": 64}),
])
def test_short_training_on_cifar10_and_svhn_files(tmp_path, method, settings):
    write_cifar10(tmp_path)
    write_svhn(tmp_path)
    for dataset in ("cifar10", "svhn"):
        out = gencls.train(method=method, dataset=dataset, labels=30, val_size=10, batch_size=20, epochs=1,
                           data_root=str(tmp_path), method_config=settings, out=str(tmp_path / f"{dataset}-{method}"),
                           **QUIET)
        run = gencls.load_run(out)
        assert run.image_shape == (3, 32, 32)
        assert method == "acgan" or run.method.arch == "conv"
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert np.isfinite(record["loss_lab"])
        assert gencls.evaluate(run, log=lambda s: None)["n"] == 20
        if run.method.can_generate:
            assert gencls.generate(run, n=4, seed=0).shape == (4, 3, 32, 32)


def test_conv_networks_default_to_the_papers_widths():
    from gencls.methods import create_method

    m = create_method("improved-gan", {}, (3, 32, 32), 10)
    convs = [layer.v.shape[0] for layer in m.disc.layers if hasattr(layer, "v")]
    assert convs == [96, 96, 96, 192, 192, 192, 192, 192, 192] and m.disc.num_features == 192
    assert m.gen.c0 == 512 and (m.gen.h0, m.gen.w0) == (4, 4)
    assert m.opt_d.param_groups[0]["lr"] == 0.0003  # the CIFAR code's learning rate
    mlp = create_method("improved-gan", {}, (1, 28, 28), 10)
    assert mlp.arch == "mlp" and mlp.opt_d.param_groups[0]["lr"] == 0.003
    assert create_method("improved-gan", {"arch": "conv", "conv_width": 8, "g_width": 8}, (1, 28, 28), 10).arch == "conv"
    with pytest.raises(GenclsError, match="--image-size 32"):
        create_method("supervised", {"arch": "conv"}, (1, 8, 8), 10)


def test_resized_grayscale_runs_the_conv_networks(tmp_path):
    out = gencls.train(method="supervised", dataset="digits", subset=400, labels=50, val_size=50, batch_size=50,
                       epochs=1, image_size=32, channels=3, arch="conv", method_config={"conv_width": 8},
                       out=str(tmp_path / "run"), **QUIET)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["image_size"] == [32, 32] and cfg["channels"] == 3 and cfg["method_config"]["arch"] == "conv"
    run = gencls.load_run(out)
    assert run.image_shape == (3, 32, 32) and run.method.arch == "conv"
    assert gencls.evaluate(run, log=lambda s: None)["n"] == 359


# --- Fashion-MNIST's sources ------------------------------------------------------------------

@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_tries_the_download_before_debian(tmp_path, offline):
    lines = []
    fetch_fashion_mnist(tmp_path, log=lines.append)
    assert [s.split(":")[1].strip() for s in lines] == ["existing", "torchvision", "debian"]
    assert "torchvision: no" in lines[1] and "debian: yes" in lines[2]
    assert fashion_mnist_files_valid(tmp_path)[0]


def test_fashion_mnist_unavailable_names_the_package_and_the_download(tmp_path, offline):
    with pytest.raises(DataUnavailableError) as e:
        fetch_fashion_mnist(tmp_path, log=lambda s: None, sources=("existing", "torchvision"))
    assert "apt-get install dataset-fashion-mnist" in str(e.value) and "torchvision's download" in str(e.value)


def test_data_fetch_command_for_the_new_datasets(tmp_path, offline, capsys):
    from gencls.cli import main

    assert main(["data", "fetch", "digits", "--root", str(tmp_path)]) == 0
    assert "digits test: 359 images of 1x8x8" in capsys.readouterr().out
    assert main(["data", "fetch", "cifar10", "--root", str(tmp_path)]) == 2  # offline, no files: one line
    err = capsys.readouterr().err.strip().splitlines()
    assert "gencls: error: CIFAR-10 not found" in err[-1] and "cifar-10-batches-py" in err[-1]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 28, 28), (1, 32, 32), (3, 32, 32)])
@pytest.mark.parametrize("method", ["improved-gan", "supervised", "acgan"])
def test_methods_take_gray_and_colour_at_28_and_32(method, shape):
    from gencls.methods import create_method

    small = {"improved-gan": {"conv_width": 8, "g_width": 8, "hidden": [64, 32]}, "supervised": {"conv_width": 8, "hidden": [64]},
             "acgan": {"g_width": 8, "d_width": 8, "features": 32}}[method]
    torch.manual_seed(0)
    m = create_method(method, small, shape, 10)
    m.train()
    x, y = torch.rand(40, *shape), torch.arange(20) % 10
    m.setup(x)
    losses = m.train_step(x[:20], y, x[: 20 * m.unlabelled_batches] if m.unlabelled_batches else None)
    assert all(torch.isfinite(v) for v in losses.values())
    assert m.classify(x[:3]).shape == (3, 10)
    if m.can_generate:
        assert m.generate(2).shape == (2, *shape)
    if method != "acgan":
        assert m.arch == ("mlp" if shape == (1, 28, 28) else "conv")
