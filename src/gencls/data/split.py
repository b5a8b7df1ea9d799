"""The semi-supervised split: labelled, validation and unlabelled indices into the training set.

- validation: ``val_size`` images, class-balanced, used for model selection only;
- labelled: ``labels`` images, class-balanced, disjoint from validation;
- unlabelled: every training image not in validation (the labelled ones included, as in
  Salimans et al. 2016).
All three are fixed by ``data_seed``. Images whose target is -1 have no label (a folder dataset's
``unlabelled/``): they only ever join the unlabelled set.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gencls.errors import GenclsError


@dataclass
class SSLSplit:
    labelled: torch.Tensor
    validation: torch.Tensor
    unlabelled: torch.Tensor

    def sizes(self) -> dict[str, int]:
        return {"labelled": len(self.labelled), "validation": len(self.validation),
                "unlabelled": len(self.unlabelled)}


def _name(c: int, class_names: list[str] | None) -> str:
    return f"class '{class_names[c]}'" if class_names is not None and c < len(class_names) else f"class {c}"


def _balanced_counts(total: int, num_classes: int, available: torch.Tensor, what: str,
                     gen: torch.Generator, class_names: list[str] | None = None,
                     why_short=lambda c: "") -> torch.Tensor:
    counts = torch.full((num_classes,), total // num_classes, dtype=torch.long)
    extra = total % num_classes
    if extra:
        counts[torch.randperm(num_classes, generator=gen)[:extra]] += 1
    short = (counts > available).nonzero().flatten().tolist()
    if short:
        c = short[0]
        raise GenclsError(f"{what}: {_name(c, class_names)} has only {int(available[c])} images{why_short(c)}, "
                          f"{int(counts[c])} needed")
    return counts


def make_split(targets: torch.Tensor, labels: int | str, val_size: int, data_seed: int,
               num_classes: int | None = None, class_names: list[str] | None = None,
               val_default: str | None = None) -> SSLSplit:
    """Draw the split. ``labels`` is a count or ``"all"`` (every non-validation image).

    ``class_names`` name the classes in error messages; ``val_default`` says how ``val_size`` was
    chosen when the user did not give it (e.g. "10% of the 50 training images"), so that an error
    says it is the default and how to change it. Every class keeps at least one labelled image:
    a request that leaves a class none is refused (``GenclsError``)."""
    targets = torch.as_tensor(targets).long()
    n = len(targets)
    k = int(num_classes if num_classes is not None else targets.max().item() + 1)
    if val_default is None:
        val_flag, val_hint = f"--val-size {val_size}", ""
    else:
        val_flag = f"--val-size {val_size} (the default: {val_default})"
        val_hint = f"; give --val-size 0 (no validation split) or --val-size N with N >= {k} (one per class)"
    if val_size < 0 or val_size >= n:
        raise GenclsError(f"{val_flag}: must be between 0 and {n - 1} for {n} training images{val_hint}")
    gen = torch.Generator().manual_seed(int(data_seed))
    perm = torch.randperm(n, generator=gen)
    by_class = [perm[targets[perm] == c] for c in range(k)]  # each class in a seeded random order
    available = torch.tensor([len(ix) for ix in by_class])
    if val_size and val_size < k:
        raise GenclsError(f"{val_flag}: needs at least one image per class ({k} classes){val_hint}")
    try:
        val_counts = _balanced_counts(val_size, k, available, val_flag,
                                      torch.Generator().manual_seed(int(data_seed) + 1), class_names)
    except GenclsError as e:
        raise GenclsError(f"{e}{val_hint}") from None
    if labels == "all":
        lab_counts = available - val_counts
        empty = (lab_counts <= 0).nonzero().flatten().tolist()
        if empty:
            c = empty[0]
            if val_counts[c]:
                raise GenclsError(f"{val_flag} leaves {_name(c, class_names)} no labelled image (its "
                                  f"{int(available[c])} all go to validation); give a smaller --val-size "
                                  f"or more labelled images{val_hint}")
            raise GenclsError(f"{_name(c, class_names)} has no labelled training image")
    else:
        labels = int(labels)
        if labels < k:
            raise GenclsError(f"--labels {labels}: need at least one labelled image per class ({k} classes)")
        lab_counts = _balanced_counts(
            labels, k, available - val_counts, f"--labels {labels}", torch.Generator().manual_seed(int(data_seed) + 2),
            class_names, lambda c: f" left after {val_flag} takes {int(val_counts[c])}" if val_counts[c] else "")
    # labelled images come first in each class's order, validation images after them
    labelled = torch.cat([ix[: lab_counts[c]] for c, ix in enumerate(by_class)])
    validation = torch.cat([ix[len(ix) - val_counts[c]:] if val_counts[c] else ix[:0]
                            for c, ix in enumerate(by_class)])
    mask = torch.ones(n, dtype=torch.bool)
    mask[validation] = False
    return SSLSplit(labelled.sort().values, validation.sort().values, mask.nonzero().flatten())
