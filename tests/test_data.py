import gzip
import pickle

import numpy as np
import pytest
import torch
import torchvision

from gencls.data import load_split
from gencls.data.sources import MNIST_MD5, fetch_mnist, idx_bytes, md5sum, mnist_files_valid, mnist_raw_dir, read_idx
from gencls.data.sources import mnist_from_hub_pickle
from gencls.errors import DataUnavailableError


def test_mnist_raw_files_match_the_published_md5s(data_root):
    raw = mnist_raw_dir(data_root)
    for name, digest in MNIST_MD5.items():
        assert md5sum(raw / name) == digest
    # and torchvision reads them as MNIST
    ds = torchvision.datasets.MNIST(str(data_root), train=False, download=False)
    assert ds.data.shape == (10000, 28, 28) and ds.targets[:5].tolist() == [7, 2, 1, 0, 4]


def test_mnist_splits_as_in_memory_tensors(data_root):
    train = load_split("mnist", "train", data_root, log=lambda s: None)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and set(train.labels.unique().tolist()) == set(range(10))
    assert train.classes == [str(i) for i in range(10)]


def test_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(idx_bytes(a))
    assert np.array_equal(read_idx(p), a)
    assert p.read_bytes()[:4] == b"\x00\x00\x08\x03"


def test_hub_pickle_decoding_inverts_pixel_over_256():
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, size=(6, 784)).astype(np.uint8)
    lab = np.arange(6) % 10
    as_float = (pix.astype(np.float32) / 256).astype(np.float32)
    blob = gzip.compress(pickle.dumps(((as_float[:2], lab[:2]), (as_float[2:4], lab[2:4]), (as_float[4:], lab[4:])),
                                      protocol=2))
    out = mnist_from_hub_pickle(blob)
    assert np.array_equal(out["train-images-idx3-ubyte"].reshape(4, 784), pix[:4])
    assert np.array_equal(out["t10k-images-idx3-ubyte"].reshape(2, 784), pix[4:])
    assert out["train-labels-idx1-ubyte"].tolist() == lab[:4].tolist()


def test_hub_pickle_refuses_code():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    blob = gzip.compress(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError):
        mnist_from_hub_pickle(blob)


def test_existing_files_are_verified(tmp_path, data_root):
    raw = mnist_raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in MNIST_MD5:
        (raw / name).write_bytes((mnist_raw_dir(data_root) / name).read_bytes())
    assert mnist_files_valid(tmp_path)[0]
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"corrupt")
    ok, why = mnist_files_valid(tmp_path)
    assert not ok and "MD5" in why


def test_no_source_gives_one_clear_error(tmp_path):
    lines = []
    with pytest.raises(DataUnavailableError) as e:
        fetch_mnist(tmp_path, log=lines.append, sources=("existing",))
    assert "tried existing" in str(e.value) and len(lines) == 1
