"""Evaluation: classification metrics and plots."""
from gencls.evaluation.metrics import auroc, classification_report, confusion_matrix, fpr_at_tpr, predict_logits

__all__ = ["auroc", "fpr_at_tpr", "classification_report", "confusion_matrix", "predict_logits"]
