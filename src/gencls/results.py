"""What ``predict`` returns for each file (torch-free: shared by the PyTorch and ONNX Runtime paths)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Prediction:
    path: str
    label: str | None = None
    probability: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    ood_score: float | None = None  # how much the image looks like the training data (higher = more alike)
    ood_flag: bool | None = None  # True: unlike the training data (score below the calibrated threshold)
    error: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "class": self.label, "probability": self.probability,
                "top_k": [{"class": c, "probability": p} for c, p in self.top_k],
                "ood_score": self.ood_score, "ood_flag": self.ood_flag, "error": self.error}
