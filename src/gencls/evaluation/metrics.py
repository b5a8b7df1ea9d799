"""Classification metrics."""
from __future__ import annotations

import torch


def predict_logits(method, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits for a whole tensor of images, in batches, through ``method.classify``."""
    device = method.device
    out = [method.classify(x[i : i + batch_size].to(device, non_blocking=True)).float()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, method.num_classes)


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows: true class, columns: predicted class."""
    idx = y_true.long().cpu() * num_classes + y_pred.long().cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_report(y_true: torch.Tensor, logits: torch.Tensor, classes: list[str]) -> dict:
    k = len(classes)
    pred = logits.argmax(1).cpu()
    y_true = y_true.cpu()
    cm = confusion_matrix(y_true, pred, k)
    support = cm.sum(1)
    per_class = [None if n == 0 else a for a, n in  # a class with no images here has no accuracy
                 zip((cm.diag().float() / support.clamp_min(1)).tolist(), support.tolist())]
    acc = float((pred == y_true).float().mean())
    nll = float(torch.nn.functional.cross_entropy(logits.float().cpu(), y_true))
    return {"n": int(len(y_true)), "accuracy": acc, "error": 1 - acc, "error_percent": 100 * (1 - acc), "nll": nll,
            "per_class_accuracy": {c: a for c, a in zip(classes, per_class)},
            "confusion_matrix": cm.tolist()}


def auroc(scores_pos: torch.Tensor, scores_neg: torch.Tensor) -> float:
    """Area under the ROC curve for telling ``pos`` (higher scores) from ``neg``.

    The Mann-Whitney statistic with mid-ranks: P(s_pos > s_neg) + 1/2 P(s_pos = s_neg).
    """
    pos, neg = scores_pos.double().flatten().cpu(), scores_neg.double().flatten().cpu()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("auroc needs at least one score on each side")
    values, inverse, counts = torch.unique(torch.cat([pos, neg]), sorted=True, return_inverse=True, return_counts=True)
    below = torch.cumsum(counts, 0) - counts  # how many values are smaller
    midrank = below.double() + (counts.double() + 1) / 2  # 1-based average rank of each distinct value
    rank_sum = midrank[inverse[: len(pos)]].sum()
    n_pos, n_neg = len(pos), len(neg)
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fpr_at_tpr(scores_pos: torch.Tensor, scores_neg: torch.Tensor, tpr: float = 0.95) -> float:
    """Fraction of ``neg`` accepted (score >= t) at the threshold t that accepts ``tpr`` of ``pos``."""
    pos = scores_pos.double().flatten().cpu().sort().values
    t = pos[int(max(0, min(len(pos) - 1, int((1 - tpr) * len(pos)))))]
    return float((scores_neg.double().flatten().cpu() >= t).double().mean())
