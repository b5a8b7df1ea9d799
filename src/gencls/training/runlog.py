"""What a run writes while it trains: metrics as JSON lines, TensorBoard events, sample grids."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from gencls.utils import atomic_write_bytes


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
        keep = [ln for ln, rec in _parse_lines(self.metrics_path) if rec.get("epoch", 0) <= epoch]
        atomic_write_bytes(self.metrics_path, "".join(ln + "\n" for ln in keep).encode())

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


def _parse_lines(path: Path):
    """(line, record) for each well-formed line; a line torn by a crash is skipped."""
    for ln in path.read_text().splitlines():
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            yield ln, rec


def read_metrics(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    return [rec for _, rec in _parse_lines(p)] if p.exists() else []


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 10) -> None:
    from torchvision.utils import save_image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(images.detach().float().cpu().clamp(0, 1), str(path), nrow=nrow, padding=2, pad_value=0.5)
