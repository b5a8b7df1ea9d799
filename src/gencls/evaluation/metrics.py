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
    per_class = (cm.diag().float() / support.clamp_min(1)).tolist()
    acc = float((pred == y_true).float().mean())
    nll = float(torch.nn.functional.cross_entropy(logits.float().cpu(), y_true))
    return {"n": int(len(y_true)), "accuracy": acc, "error": 1 - acc, "error_percent": 100 * (1 - acc), "nll": nll,
            "per_class_accuracy": {c: a for c, a in zip(classes, per_class)},
            "confusion_matrix": cm.tolist()}
