"""Out-of-distribution: "this is not one of my classes".

Every method scores an image by how much it looks like the training data (``Method.ood_score``,
higher = more alike: the discriminator's D(x) for ``improved-gan``, the maximum softmax
probability by default). The threshold below which an input is flagged is the
``OOD_PERCENTILE``-th percentile of the scores of the run's validation split, so about 1% of
in-distribution images are flagged by design. Its quality is measured by the AUROC of the score
for telling the test set apart from another dataset (``gencls evaluate RUN --ood fashion-mnist``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from gencls.errors import GenclsError

OOD_PERCENTILE = 1.0
OOD_SETS = ("fashion-mnist", "noise")
NOISE_SEED = 0


def score_batches(method, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``method.ood_score`` over a whole tensor of images, in batches."""
    device = method.device
    out = [method.ood_score(x[i : i + batch_size].to(device, non_blocking=True)).float().cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def calibrate_threshold(scores: torch.Tensor, percentile: float = OOD_PERCENTILE) -> float:
    """The score below which ``percentile`` % of these (in-distribution) scores lie."""
    if len(scores) == 0:
        raise GenclsError("no images to calibrate the out-of-distribution threshold on")
    return float(torch.quantile(scores.double().flatten(), percentile / 100.0))


def summary(scores: torch.Tensor) -> dict[str, float]:
    qs = torch.tensor([0.0, 0.01, 0.05, 0.5, 0.95, 1.0], dtype=torch.float64)
    vals = torch.quantile(scores.double().flatten(), qs).tolist()
    return {f"q{round(100 * q):02d}": v for q, v in zip(qs.tolist(), vals)} | {"mean": float(scores.double().mean())}


def conform(images: torch.Tensor, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Float images (N, C, H, W) in [0, 1] converted to a model's channels and size."""
    c = image_shape[0]
    if images.shape[1] != c:
        images = images.mean(1, keepdim=True) if c == 1 else images.expand(-1, c, -1, -1) if images.shape[1] == 1 \
            else images[:, :c]
    if tuple(images.shape[2:]) != tuple(image_shape[1:]):
        images = F.interpolate(images, size=tuple(image_shape[1:]), mode="bilinear", align_corners=False,
                               antialias=True)
    return images.clamp(0, 1).contiguous()


def check_ood_names(names) -> None:
    """Refuse unknown ``--ood`` names before any work is done."""
    from gencls.data import list_datasets

    known = sorted(set(OOD_SETS) | set(list_datasets()))
    for name in names:
        if name not in known:
            raise GenclsError(f"--ood {name}: one of {', '.join(known)}")


def ood_images(name: str, image_shape: tuple[int, int, int], data_root=None, n: int = 10000,
               log: Callable[[str], None] = print) -> torch.Tensor:
    """The images an out-of-distribution evaluation compares the test set with, as model inputs.

    ``fashion-mnist``: its test split; ``noise``: ``n`` images of uniform noise in [0, 1]
    (seed ``NOISE_SEED``); any other registered dataset name: its test split.
    """
    if name == "noise":
        gen = torch.Generator().manual_seed(NOISE_SEED)
        return torch.rand(n, *image_shape, generator=gen)
    from gencls.data import load_split

    check_ood_names([name])
    data = load_split(name, "test", data_root, log=log)
    return conform(data.images.float().div(255), image_shape)
