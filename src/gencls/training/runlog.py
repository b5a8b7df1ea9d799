"""What a run writes while it trains: metrics as JSON lines, TensorBoard events, sample grids."""
from __future__ import annotations

import io
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


def _image_format(path: str | Path) -> str:
    """PIL's format for the file name's extension (as ``Image.save(path)`` would choose)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown file extension: {Path(path).suffix}")
    return fmt


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 10) -> None:
    """An image grid, written atomically (a kill mid-write never leaves a truncated image)."""
    from torchvision.utils import save_image

    buf = io.BytesIO()
    save_image(images.detach().float().cpu().clamp(0, 1), buf, format=_image_format(path), nrow=nrow, padding=2,
               pad_value=0.5)
    atomic_write_bytes(path, buf.getvalue())


def save_labelled_grid(images: torch.Tensor, path: str | Path, nrow: int, row_labels: list[str] | None = None,
                       scale: int = 1) -> None:
    """A grid of ``nrow`` images per row, each row's label written in a margin on its left.

    ``scale`` enlarges the image (nearest neighbour) for small figures.
    """
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import make_grid

    pad = 2
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=pad, pad_value=0.5)
    arr = grid.mul(255).round().byte().permute(1, 2, 0).numpy()
    im = Image.fromarray(arr.squeeze(2) if arr.shape[2] == 1 else arr).convert("RGB")
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    if row_labels:
        font = ImageFont.load_default()
        draw = ImageDraw.Draw(im)
        widths = [draw.textbbox((0, 0), str(t), font=font)[2] for t in row_labels]
        margin = max(widths) + 8
        canvas = Image.new("RGB", (im.width + margin, im.height), (255, 255, 255))
        canvas.paste(im, (margin, 0))
        draw = ImageDraw.Draw(canvas)
        row_h = (images.shape[-2] + pad) * scale
        for r, text in enumerate(row_labels):
            box = draw.textbbox((0, 0), str(text), font=font)
            y = pad * scale + r * row_h + (row_h - pad * scale - (box[3] - box[1])) // 2 - box[1]
            draw.text((margin - 4 - (box[2] - box[0]), y), str(text), fill=(0, 0, 0), font=font)
        im = canvas
    buf = io.BytesIO()
    im.save(buf, format=_image_format(path))
    atomic_write_bytes(path, buf.getvalue())
