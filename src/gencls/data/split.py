"""The semi-supervised split: labelled, validation and unlabelled indices into the training set.

- validation: ``val_size`` images, class-balanced, used for model selection only;
- labelled: ``labels`` images, class-balanced, disjoint from validation (or the images a user
  chose, ``--labelled``: validation is then drawn from the others);
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


def make_split(targets: torch.Tensor, labels: int | str | torch.Tensor, val_size: int, data_seed: int,
               num_classes: int | None = None, class_names: list[str] | None = None,
               val_default: str | None = None, rows: torch.Tensor | None = None) -> SSLSplit:
    """Draw the split. ``labels`` is a count, ``"all"`` (every non-validation image) or a tensor of
    the positions in ``targets`` that are the labelled images (``--labelled``; validation is then
    drawn from the others).

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
    chosen = None
    if isinstance(labels, torch.Tensor):  # --labelled: these, each class's validation from its others
        chosen = labels.long()
        _check_chosen(chosen, targets, k, class_names, rows)
        is_chosen = torch.zeros(n, dtype=torch.bool)
        is_chosen[chosen] = True
        perm = perm[~is_chosen[perm]]
    by_class = [perm[targets[perm] == c] for c in range(k)]  # each class in a seeded random order
    available = torch.tensor([len(ix) for ix in by_class])
    if val_size and val_size < k:
        raise GenclsError(f"{val_flag}: needs at least one image per class ({k} classes){val_hint}")
    try:
        val_counts = _balanced_counts(val_size, k, available, val_flag,
                                      torch.Generator().manual_seed(int(data_seed) + 1), class_names)
    except GenclsError as e:
        raise GenclsError(f"{e}{val_hint}") from None
    if chosen is not None:
        lab_counts = torch.zeros(k, dtype=torch.long)  # none drawn: the chosen ones are added below
    elif labels == "all":
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
    labelled = torch.cat([ix[: lab_counts[c]] for c, ix in enumerate(by_class)]) if chosen is None else chosen
    validation = torch.cat([ix[len(ix) - val_counts[c]:] if val_counts[c] else ix[:0]
                            for c, ix in enumerate(by_class)])
    mask = torch.ones(n, dtype=torch.bool)
    mask[validation] = False
    return SSLSplit(labelled.sort().values, validation.sort().values, mask.nonzero().flatten())


def _check_chosen(pos: torch.Tensor, targets: torch.Tensor, k: int, class_names: list[str] | None,
                  rows: torch.Tensor | None) -> None:
    """``--labelled`` positions: each has a label, and every class has one (``rows``: the training
    set's row of each position, for the messages; None: the same)."""
    no_label = pos[targets[pos] < 0]
    if len(no_label):
        row = int(no_label[0] if rows is None else rows[no_label[0]])
        raise GenclsError(f"--labelled: row {row} of the training set has no label (it is an unlabelled image)")
    missing = sorted(set(range(k)) - set(targets[pos].tolist()))
    if missing:
        raise GenclsError(f"--labelled: no image of {_name(missing[0], class_names)} among the {len(pos)} listed "
                          "(every class needs at least one labelled image)")


def labelled_positions(rows: list[int], subset: torch.Tensor | None, n_rows: int) -> torch.Tensor:
    """``--labelled`` rows of the training set -> positions in the images a run uses (``subset``:
    the rows ``--subset`` drew, or None for all ``n_rows``)."""
    past = [r for r in rows if r >= n_rows]  # before the tensor: a row past int64 would not fit it
    if past:
        raise GenclsError(f"--labelled: row {past[0]} is past the {n_rows} training images (rows 0 to "
                          f"{n_rows - 1})")
    t = torch.as_tensor(rows, dtype=torch.long)
    if subset is None:
        return t
    where = torch.full((n_rows,), -1, dtype=torch.long)
    where[subset] = torch.arange(len(subset))
    pos = where[t]
    if (pos < 0).any():
        raise GenclsError(f"--labelled: row {int(t[pos < 0][0])} is not among the --subset {len(subset)} images "
                          "drawn for this run")
    return pos


def read_labelled_file(path) -> list[int]:
    """The rows of ``--labelled FILE``: integers (whitespace or comma separated, ``#`` comments), a
    JSON list of them, or a run's ``split.json`` (its labelled images, as rows of the training set)."""
    import json
    import re
    from pathlib import Path

    from gencls.utils import read_user_file

    path = Path(path)
    text = read_user_file(path, "--labelled")
    if text.lstrip().startswith(("[", "{")):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenclsError(f"--labelled {path}: not valid JSON ({e})") from None
        if isinstance(obj, dict):  # a run's split.json: positions in its --subset draw, if it had one
            if not isinstance(obj.get("labelled"), list):
                raise GenclsError(f"--labelled {path}: a JSON object needs a 'labelled' list (as a run's split.json)")
            rows, subset = obj["labelled"], obj.get("subset")
            if isinstance(subset, list):
                # positions 0 .. len(subset) - 1 (a negative one would count from the end)
                if not all(type(i) is int and 0 <= i < len(subset) for i in rows):
                    raise GenclsError(f"--labelled {path}: its 'labelled' positions do not fit its 'subset'")
                rows = [subset[i] for i in rows]
        else:
            rows = obj
        if not isinstance(rows, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows):
            raise GenclsError(f"--labelled {path}: expected a list of row numbers")
    else:
        words = [w for w in re.split(r"[\s,]+", re.sub(r"#.*", "", text)) if w]
        rows = []
        for w in words:
            try:
                rows.append(int(w))
            except ValueError:
                raise GenclsError(f"--labelled {path}: {w!r} is not a row number") from None
    if not rows:
        raise GenclsError(f"--labelled {path}: no rows in it")
    return rows
