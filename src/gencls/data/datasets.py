"""Dataset registry: a name -> a loader that returns whole splits as in-memory tensors.

Images are uint8 tensors of shape (N, C, H, W); the model input is ``images.float() / 255``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from gencls.data.sources import (FASHION_MNIST_CLASSES, default_root, fashion_mnist_files_valid,
                                 fashion_mnist_raw_dir, fetch_fashion_mnist, fetch_mnist, mnist_files_valid,
                                 read_idx)
from gencls.errors import GenclsError


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]

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


def load_split(name: str, split: str = "train", root: str | Path | None = None,
               log: Callable[[str], None] = print) -> Split:
    """Load ``split`` ("train" or "test") of dataset ``name``, fetching files if needed."""
    if name not in _DATASETS:
        raise GenclsError(f"unknown dataset '{name}' (known: {', '.join(list_datasets())})")
    if split not in ("train", "test"):
        raise GenclsError(f"unknown split '{split}' (train or test)")
    return _DATASETS[name](split, Path(root) if root else default_root(), log)


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
