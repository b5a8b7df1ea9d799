"""Dataset registry: a name -> a loader that returns whole splits as in-memory tensors.

Images are uint8 tensors of shape (N, C, H, W); the model input is ``images.float() / 255``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gencls.data.sources import (CIFAR10_CLASSES, FASHION_MNIST_CLASSES, SVHN_FILES, default_root,
                                 fashion_mnist_files_valid, fashion_mnist_raw_dir, fetch_cifar10, fetch_fashion_mnist,
                                 fetch_mnist, fetch_svhn, mnist_files_valid, read_cifar_batch, read_cifar_classes,
                                 read_idx, read_svhn_mat)
from gencls.errors import GenclsError


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,); -1 for an image without a label (a folder dataset's unlabelled/)
    classes: list[str]
    # the dataset's own defaults for training settings left unset (e.g. {"labels": "all", "val_size": 0})
    defaults: dict = field(default_factory=dict)
    # JSON files the trainer writes into the run folder (e.g. the skipped files of a folder dataset)
    run_files: dict = field(default_factory=dict)
    # a folder dataset's files in row order, as a hash (sha256 hex of [[relative path, size, mtime_ns], ...]):
    # changes when a file is added, removed, renamed or changed; None for the built-in datasets
    fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


Loader = Callable[[str, Path, Callable[[str], None]], Split]
_DATASETS: dict[str, Loader] = {}


def register_dataset(name: str):
    def deco(fn: Loader) -> Loader:
        _DATASETS[name] = fn
        return fn
    return deco


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


FOLDER_PREFIX = "folder:"


def load_split(name: str, split: str = "train", root: str | Path | None = None,
               log: Callable[[str], None] = print, image_size: int | list[int] | None = None,
               channels: int | None = None, folder_test_rule: int | None = None) -> Split:
    """Load ``split`` ("train" or "test") of dataset ``name``, fetching files if needed.

    ``name`` is a registered dataset or ``folder:PATH`` (your own images, ``gencls.data.folder``).
    ``image_size`` (N or [H, W]) and ``channels`` (1 or 3) convert the images (bilinear resize,
    grayscale <-> RGB); None keeps the dataset's own (for a folder: what most of its images have).
    ``folder_test_rule``: how a folder without ``test/`` holds out its test split (``gencls.data.folder
    ._hold_out_test``); None: the current rule.
    """
    if split not in ("train", "test"):
        raise GenclsError(f"unknown split '{split}' (train or test)")
    size = parse_image_size(image_size)
    if channels is not None and channels not in (1, 3):
        raise GenclsError(f"--channels {channels}: 1 (grayscale) or 3 (RGB)")
    data_root = Path(root) if root else default_root()
    if name.startswith(FOLDER_PREFIX):
        from gencls.data.folder import TEST_RULE, load_folder

        return load_folder(name[len(FOLDER_PREFIX):], split, data_root, log, size, channels,
                           TEST_RULE if folder_test_rule is None else folder_test_rule)
    if name not in _DATASETS:
        raise GenclsError(f"unknown dataset '{name}' (known: {', '.join(list_datasets())}, or folder:PATH)")
    return convert(_DATASETS[name](split, data_root, log), size, channels)


def load_run_split(config, split: str = "train", root: str | Path | None = None,
                   log: Callable[[str], None] = print) -> Split:
    """The data a run was trained on (``config``: its TrainConfig): its dataset, converted as it was,
    a folder's test split held out by the run's rule. A folder's ``Split.fingerprint`` identifies its rows."""
    return load_split(config.dataset, split, root or config.data_root, log,
                      getattr(config, "image_size", None), getattr(config, "channels", None),
                      getattr(config, "folder_test_rule", None))


def parse_image_size(value) -> tuple[int, int] | None:
    """None, N, "N", "HxW" or [H, W] -> (H, W) or None; sides between 4 and 512."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            parts = [int(v) for v in value.lower().split("x")]
        elif isinstance(value, int):
            parts = [value]
        else:
            parts = [int(v) for v in value]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2:
            raise ValueError
    except (TypeError, ValueError):
        raise GenclsError(f"--image-size {value!r}: N or HxW (e.g. 32 or 32x48)") from None
    if not all(4 <= p <= 512 for p in parts):
        raise GenclsError(f"--image-size {value!r}: each side between 4 and 512 pixels")
    return parts[0], parts[1]


def convert(data: Split, size: tuple[int, int] | None, channels: int | None) -> Split:
    """Resize (bilinear, antialiased) and convert grayscale <-> RGB (ITU-R 601 luma) in memory."""
    x = data.images
    if channels is not None and channels != x.shape[1]:
        if channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    if size is not None and tuple(size) != tuple(x.shape[2:]):
        chunks = [torch.nn.functional.interpolate(c.float(), size=tuple(size), mode="bilinear", antialias=True,
                                                  align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
                  for c in x.split(4096)]
        x = torch.cat(chunks) if chunks else x.new_zeros((0, x.shape[1], *size))
    if x is data.images:
        return data
    return replace(data, images=x)


@register_dataset("mnist")
def _mnist(split: str, root: Path, log) -> Split:
    import torchvision

    ok, why = mnist_files_valid(root)
    if not ok:
        log(f"MNIST not found under {root} ({why}); fetching it")
        fetch_mnist(root, log=log)
    ds = torchvision.datasets.MNIST(str(root), train=(split == "train"), download=False)
    return Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long(), [str(i) for i in range(10)])


@register_dataset("fashion-mnist")
def _fashion_mnist(split: str, root: Path, log) -> Split:
    ok, why = fashion_mnist_files_valid(root)
    if not ok:
        log(f"Fashion-MNIST not found under {root} ({why}); fetching it")
        fetch_fashion_mnist(root, log=log)
    raw = fashion_mnist_raw_dir(root)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(raw / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte")
    expected = 60000 if split == "train" else 10000
    if images.shape != (expected, 28, 28) or labels.shape != (expected,) or labels.max() > 9:
        raise GenclsError(f"{raw}: unexpected Fashion-MNIST arrays {images.shape} / {labels.shape}")
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype("int64")),
                 list(FASHION_MNIST_CLASSES))


DIGITS_TEST_FRACTION = 0.2  # held out per class with a fixed seed: the same 359 test images everywhere


@register_dataset("digits")
def _digits(split: str, root: Path, log) -> Split:
    """scikit-learn's bundled 8x8 digits (1797 images, offline), pixels 0..16 scaled to 0..255.

    The test split is fixed: per class, 20% of the images (rounded) chosen by a permutation with
    seed 0, so it is the same on every machine (359 test, 1438 training images)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy((d.images * (255.0 / 16.0)).round().clip(0, 255).astype("uint8")).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype("int64"))
    gen = torch.Generator().manual_seed(0)
    test = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        ix = (labels == c).nonzero().flatten()
        ix = ix[torch.randperm(len(ix), generator=gen)]
        test[ix[: round(DIGITS_TEST_FRACTION * len(ix))]] = True
    keep = test if split == "test" else ~test
    return Split(images[keep].contiguous(), labels[keep], [str(i) for i in range(10)])


@register_dataset("cifar10")
def _cifar10(split: str, root: Path, log) -> Split:
    folder = fetch_cifar10(root, log=log)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    try:
        parts = [read_cifar_batch(folder / n) for n in names]
        classes = read_cifar_classes(folder / "batches.meta")
    except (ValueError, KeyError, OSError) as e:
        raise GenclsError(f"CIFAR-10: {e}") from None
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return Split(x, y, classes if len(classes) == 10 else list(CIFAR10_CLASSES))


@register_dataset("svhn")
def _svhn(split: str, root: Path, log) -> Split:
    folder = fetch_svhn(root, log=log, splits=(split,))
    try:
        x, y = read_svhn_mat(folder / SVHN_FILES[split])
    except ValueError as e:
        raise GenclsError(f"SVHN: {e}") from None
    return Split(torch.from_numpy(x), torch.from_numpy(y), [str(i) for i in range(10)])
