"""What a run writes while it trains: metrics as JSON lines, TensorBoard events, sample grids."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch


class RunLog:
    def __init__(self, run_dir: Path, tensorboard: bool = True, truncate_after_epoch: int | None = None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if truncate_after_epoch is not None:
            self._truncate(truncate_after_epoch)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self.tb = None

    def _truncate(self, epoch: int) -> None:
        """On resume, drop lines of epochs after the checkpoint (they will be trained again)."""
        if not self.metrics_path.exists():
            return
        keep = [ln for ln in self.metrics_path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("epoch", 0) <= epoch]
        self.metrics_path.write_text("".join(ln + "\n" for ln in keep))

    def epoch(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            step = record["step"]
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"epoch/{k}", v, step)
            self.tb.flush()

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 10) -> None:
    from torchvision.utils import save_image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(images.detach().float().cpu().clamp(0, 1), str(path), nrow=nrow, padding=2, pad_value=0.5)
