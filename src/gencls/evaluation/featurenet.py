"""The in-domain feature network of the generation metrics (the role Inception-v3 plays for FID on
photographs): a small CNN classifier trained on a dataset's full labelled training set, cached in the
data root as safetensors + JSON (SHA-256 of the weights, test accuracy, training settings).

``train_classifier`` (the recipe) is also what CAS trains on generated images.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from gencls.data import default_root, load_split
from gencls.data.datasets import FOLDER_PREFIX, parse_image_size
from gencls.errors import GenclsError
from gencls.nets import ConvClassifier
from gencls.utils import FolderLock, atomic_write_bytes, atomic_write_json, read_json

VERSION = 1  # bump when the architecture or the recipe changes: a new cache file is made
# "min_steps": a small dataset (digits: 12 steps an epoch; a folder of 100 labelled images: 1) trains for
# more epochs, at least this many steps in all (the full sets are far above it: MNIST's 4 epochs are 1,876)
RECIPE = {"epochs": 4, "batch_size": 128, "lr": 0.003, "weight_decay": 0.0005, "max_shift": 2, "seed": 0,
          "min_steps": 1000}


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by its own random whole-pixel offset in [-max_shift, max_shift] (zero fill)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator, device="cpu").to(x.device)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator, device="cpu").to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * s)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return padded.gather(2, rows).gather(3, cols)


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int = RECIPE["epochs"],
                     batch_size: int = RECIPE["batch_size"], lr: float = RECIPE["lr"],
                     weight_decay: float = RECIPE["weight_decay"], max_shift: int = RECIPE["max_shift"],
                     seed: int = RECIPE["seed"], min_steps: int = 0,
                     log: Callable[[str], None] | None = None) -> ConvClassifier:
    """Train a ``ConvClassifier`` on float images ``x`` (N, C, H, W) in [0, 1] and labels ``y``.

    AdamW with a one-cycle learning rate, random shifts; a fixed schedule (no selection on any
    held-out data), so nothing but the training images decide the network. Runs on ``x``'s device.
    ``epochs`` is raised to make at least ``min_steps`` steps (``training_epochs``).
    """
    device = x.device
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        net = ConvClassifier(tuple(x.shape[1:]), num_classes).to(device)
        steps_per_epoch = math.ceil(len(x) / batch_size)
        epochs = training_epochs(len(x), epochs, batch_size, min_steps)
        every = max(1, epochs // 10)  # at most about ten progress lines
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
        net.train()
        for epoch in range(epochs):
            t0, perm, total = time.time(), torch.randperm(len(x), generator=gen).to(device), 0.0
            for i in range(steps_per_epoch):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                xb = random_shift(x[idx], max_shift, gen)
                loss = F.cross_entropy(net(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.detach()
            if log and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
                log(f"  epoch {epoch + 1}/{epochs}: loss {float(total) / steps_per_epoch:.4f}, {time.time() - t0:.0f}s")
    return net.eval()


def training_epochs(n: int, epochs: int, batch_size: int, min_steps: int = 0) -> int:
    """``epochs``, or more where ``n`` images in batches of ``batch_size`` make fewer than ``min_steps`` steps."""
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    return max(int(epochs), math.ceil(min_steps / steps_per_epoch))


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch_size: int = 1000, device: torch.device | None = None) -> torch.Tensor:
    """``fn`` over ``x`` in batches (moved to ``device``), results concatenated on the CPU."""
    device = device or x.device
    return torch.cat([fn(x[i : i + batch_size].to(device).float()).float().cpu() for i in range(0, len(x), batch_size)])


class FeatureExtractor(nn.Module):
    """A trained ``ConvClassifier`` as torchmetrics' custom feature module: images -> penultimate features.

    A 2-D input of width ``num_features`` is taken as features already computed (the cached real
    set's) and passed through, so cached statistics go through the same torchmetrics update.
    """

    def __init__(self, net: ConvClassifier):
        super().__init__()
        self.net = net.eval()
        self.num_features = net.num_features

    def train(self, mode: bool = True):  # always evaluates
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2 and x.shape[1] == self.num_features:
            return x.float()
        return self.net.features(x.float())


@dataclass
class FeatureNet:
    net: ConvClassifier
    info: dict  # dataset, sha256, test_accuracy, train_seconds, recipe, path
    classes: list[str]

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def features(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        return batched(self.net.features, x, batch_size, self.device)

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net.out(f.to(self.device).float()).cpu()

    def extractor(self) -> FeatureExtractor:
        return FeatureExtractor(self.net)


# the images of a built-in dataset as loaded (channels, height, width): a run at another --image-size
# or --channels gets a feature network of its own
NATIVE_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "digits": (1, 8, 8), "cifar10": (3, 32, 32),
                 "svhn": (3, 32, 32)}


def net_path(dataset: str, data_root: str | Path | None = None, cache_dir: str | Path | None = None,
             image_shape: tuple[int, int, int] | None = None, folder_test_rule: int | None = None) -> Path:
    """Where the feature network of ``dataset`` is cached: ``<data root>/feature_nets/`` unless ``cache_dir``.

    A built-in dataset at its own shape: ``mnist-cnn-v1``; converted to ``image_shape`` (C, H, W):
    ``mnist-3x32x32-cnn-v1``. A folder dataset: its name and a hash of its absolute path, the shape
    and the folder test rule (``folder-my-images-<hash>-1x28x28-rule2-cnn-v1``)."""
    folder = Path(cache_dir) if cache_dir else Path(data_root or default_root()) / "feature_nets"
    shape = "x".join(str(int(v)) for v in image_shape) if image_shape is not None else None
    if dataset.startswith(FOLDER_PREFIX):
        where = Path(dataset[len(FOLDER_PREFIX):]).expanduser().resolve()
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", where.name).strip("-.")[:40] or "root"
        digest = hashlib.sha256(str(where).encode()).hexdigest()[:10]
        stem = f"folder-{name}-{digest}" + (f"-{shape}" if shape else "") + \
            (f"-rule{folder_test_rule}" if folder_test_rule is not None else "")
    else:
        native = NATIVE_SHAPES.get(dataset)
        stem = dataset + (f"-{shape}" if shape and tuple(image_shape) != native else "")
    return folder / f"{stem}-cnn-v{VERSION}.safetensors"


def data_shape(dataset: str, data_root: str | Path | None = None, image_size=None, channels: int | None = None,
               folder_test_rule: int | None = None, log: Callable[[str], None] = print) -> tuple[int, int, int]:
    """The (C, H, W) of ``dataset``'s images after ``image_size`` and ``channels``, without loading a
    built-in dataset whose shape is known."""
    native = NATIVE_SHAPES.get(dataset)
    size = parse_image_size(image_size)
    if native is not None:
        return (int(channels or native[0]), *(size or native[1:]))
    return tuple(_load(dataset, "test", data_root, log, image_size, channels, folder_test_rule).image_shape)


def _load(dataset, split, data_root, log, image_size=None, channels=None, folder_test_rule=None):
    return load_split(dataset, split, data_root, log, image_size, channels, folder_test_rule)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(dataset: str = "mnist", data_root: str | Path | None = None, force: bool = False,
            device: str | torch.device = "cpu", log: Callable[[str], None] = print, cache_dir: str | Path | None = None,
            image_size=None, channels: int | None = None, folder_test_rule: int | None = None, **recipe) -> dict:
    """Train and cache the feature network of ``dataset`` (unless cached and ``force`` is off); returns its info.

    ``image_size``, ``channels`` and ``folder_test_rule`` convert the data as a run did (a run's
    generated images are measured at the run's shape; ``gencls.data.load_split``). A folder
    dataset's network is trained on its labelled training images (not its test split) and trained
    again when the folder's files changed (its fingerprint is kept in the info).
    ``recipe`` overrides the training settings and ``subset`` trains on the first N training
    images (for tests); a net trained so is cached under a different name and says so in its info.
    """
    subset = recipe.pop("subset", None)
    unknown = set(recipe) - set(RECIPE)
    if unknown:
        raise GenclsError(f"unknown feature-network setting(s): {', '.join(sorted(unknown))}")
    folder = dataset.startswith(FOLDER_PREFIX)
    if folder and folder_test_rule is None:
        from gencls.data.folder import TEST_RULE

        folder_test_rule = TEST_RULE  # as a new run holds out its test split
    spec = dict(image_size=image_size, channels=channels, folder_test_rule=folder_test_rule)
    train = None
    if folder:  # its shape and its files: from the (cached) folder
        train = _load(dataset, "train", data_root, log, **spec)
        shape = train.image_shape
    else:
        shape = data_shape(dataset, data_root, log=log, **spec)
    path = net_path(dataset, data_root, cache_dir, shape, folder_test_rule if folder else None)
    if subset is not None or recipe:
        path = path.with_name(path.stem + f"-custom-{_digest({'subset': subset, **recipe})}.safetensors")
    settings = {**RECIPE, **recipe}
    # one process trains a given network at a time; another waits and then reads the cached one
    lock = FolderLock(path.parent, name=f".{path.stem}.lock", what="is training the feature network in",
                      wait=log)
    with lock:
        return _prepare(dataset, data_root, force, device, log, path, settings, spec, train, subset, folder,
                        folder_test_rule)


def _prepare(dataset, data_root, force, device, log, path, settings, spec, train, subset, folder, folder_test_rule):
    if path.exists() and path.with_suffix(".json").exists() and not force:
        info = _read_info(path)
        if train is not None and info.get("fingerprint") != train.fingerprint:
            log(f"the files of {dataset} changed since its feature network was trained: training it again")
        elif _schedule(info.get("recipe", {}), info.get("train_images", 0)) != _schedule(settings, info.get("train_images", 0)):
            log(f"the cached {dataset} feature network was trained on an older schedule: training it again")
        else:
            return info
    device = torch.device(device)
    train = train or _load(dataset, "train", data_root, log, **spec)
    test = _load(dataset, "test", data_root, log, **spec)
    labelled = train.labels >= 0  # a folder's unlabelled images have label -1
    x, y = train.images[labelled], train.labels[labelled]
    if len(y) == 0:
        raise GenclsError(f"{dataset}: no labelled training images, so no feature network for the generation "
                          "metrics can be trained")
    if subset is not None:
        x, y = x[:subset], y[:subset]
    epochs = training_epochs(len(y), settings["epochs"], settings["batch_size"], settings["min_steps"])
    log(f"training the {dataset} feature network on {len(y)} labelled training images ({epochs} epochs) on {device}")
    t0 = time.time()
    net = train_classifier(x.to(device).float().div_(255), y.to(device), len(train.classes), log=log, **settings)
    seconds = time.time() - t0
    pred = batched(lambda b: net(b).argmax(1), test.images.float().div_(255), device=device).long()
    acc = float((pred == test.labels).float().mean())
    blob = save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()})
    info = {"dataset": dataset, "version": VERSION, "file": path.name, "sha256": hashlib.sha256(blob).hexdigest(),
            "test_accuracy": acc, "test_images": int(len(test)), "train_seconds": seconds, "train_images": int(len(y)),
            "recipe": settings, "classes": train.classes, "image_shape": list(train.image_shape),
            "num_features": net.num_features, "device": str(device), "threads": torch.get_num_threads()}
    if folder:
        info.update(fingerprint=train.fingerprint, folder_test_rule=folder_test_rule)
    try:
        atomic_write_bytes(path, blob)
        atomic_write_json(path.with_suffix(".json"), info)
        where = f"cached at {path}"
    except OSError as e:  # a read-only data root: the network is still used, by this process only
        where = f"NOT cached: cannot write {path.parent} ({e.strerror or e}); give a writable --data-root to keep it"
        _UNCACHED[str(path)] = (info, net.cpu())
    log(f"feature network: test accuracy {100 * acc:.2f}% ({len(test)} test images), trained in {seconds:.0f}s, "
        f"{where}")
    return {**info, "path": str(path), "cached": False}


# networks trained in this process that could not be written to their cache (path -> (info, net))
_UNCACHED: dict[str, tuple[dict, ConvClassifier]] = {}


def _schedule(recipe: dict, n: int) -> dict:
    """A recipe as what it trains: the epochs it makes for ``n`` images (``min_steps`` resolved)."""
    r = {**RECIPE, "min_steps": 0, **recipe}
    min_steps = r.pop("min_steps")
    return {**r, "epochs": training_epochs(n, r["epochs"], r["batch_size"], min_steps)}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def _read_info(path: Path) -> dict:
    info = read_json(path.with_suffix(".json"))
    return {**info, "path": str(path), "cached": True}


def load(dataset: str = "mnist", data_root: str | Path | None = None, device: str | torch.device = "cpu",
         log: Callable[[str], None] = print, cache_dir: str | Path | None = None, **kw) -> FeatureNet:
    """The cached feature network of ``dataset`` (trained first if missing), its checksum verified.
    ``kw``: ``prepare``'s data conversion (image_size, channels, folder_test_rule) and recipe."""
    info = prepare(dataset, data_root, device=device, log=log, cache_dir=cache_dir, **kw)
    if not Path(info["path"]).is_file() and info["path"] in _UNCACHED:
        saved, net = _UNCACHED[info["path"]]
        return FeatureNet(net.to(device).eval(), {**saved, "path": info["path"], "cached": False},
                          list(saved["classes"]))
    return load_path(info["path"], device)


def load_path(path: str | Path, device: str | torch.device = "cpu") -> FeatureNet:
    """A feature network file made by ``prepare`` (its JSON beside it), its checksum verified."""
    path = Path(path)
    if not path.is_file() or not path.with_suffix(".json").is_file():
        raise GenclsError(f"{path}: no feature network there (make one with `gencls metrics prepare`)")
    info = _read_info(path)
    hint = f"rebuild it with `gencls metrics prepare --dataset {info.get('dataset', 'mnist')} --force`"
    if sha256_file(path) != info.get("sha256"):
        raise GenclsError(f"{path}: checksum mismatch (the cached feature network is corrupt); {hint}")
    try:
        net = ConvClassifier(tuple(info["image_shape"]), len(info["classes"]))
        net.load_state_dict(load_file(str(path)))
    except Exception as e:  # noqa: BLE001 - any unreadable or mismatching file is the same user problem
        raise GenclsError(f"{path}: cannot load the feature network ({e}); {hint}") from None
    return FeatureNet(net.to(device).eval(), info, list(info["classes"]))


def real_features(fnet: FeatureNet, dataset: str, data_root: str | Path | None = None,
                  log: Callable[[str], None] = print, image_size=None, channels: int | None = None,
                  folder_test_rule: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of the real test set (converted as ``prepare`` says), cached beside the
    network (keyed by its checksum and, for a folder, the test files' fingerprint)."""
    path = Path(fnet.info["path"]).with_name(Path(fnet.info["path"]).stem + ".test-features.safetensors")
    folder = dataset.startswith(FOLDER_PREFIX)
    test = _load(dataset, "test", data_root, log, image_size, channels, folder_test_rule) if folder else None
    key = {"net_sha256": fnet.info["sha256"], **({"test_fingerprint": test.fingerprint} if folder else {})}
    if path.exists():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                if {k: (f.metadata() or {}).get(k) for k in key} == key:
                    return f.get_tensor("features"), f.get_tensor("labels")
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt
            pass
    test = test or _load(dataset, "test", data_root, log, image_size, channels, folder_test_rule)
    if tuple(test.image_shape) != tuple(fnet.info["image_shape"]):
        raise GenclsError(f"the feature network takes {'x'.join(map(str, fnet.info['image_shape']))} images, the "
                          f"{dataset} test images are {'x'.join(map(str, test.image_shape))}")
    feats = fnet.features(test.images.float().div_(255))
    try:
        atomic_write_bytes(path, save({"features": feats.contiguous(), "labels": test.labels.contiguous()},
                                      metadata=key))
    except OSError:  # a read-only data root: computed again next time
        pass
    return feats, test.labels
