"""Evaluation: classification metrics and plots."""
from gencls.evaluation.metrics import classification_report, confusion_matrix, predict_logits

__all__ = ["classification_report", "confusion_matrix", "predict_logits"]
