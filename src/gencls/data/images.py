"""Reading users' image files into model inputs, with one clear error per bad file."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from gencls.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
MAX_PIXELS = 50_000_000  # refuse decompression bombs before decoding


def find_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively, image suffixes only, sorted); keep files as given."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def load_image(path: str | os.PathLike, image_shape: tuple[int, int, int], invert: str = "auto",
               background: float = 0.0) -> torch.Tensor:
    """One image file -> float tensor (C, H, W) in [0, 1], converted like the training data.

    ``invert``: "auto" inverts an image whose border is bright when the training images have a
    dark background (``background`` is their mean border value), "yes" or "no" force it.
    Raises ``InputError`` for anything that is not a readable image.
    """
    path = Path(path)
    c, h, w = image_shape
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise InputError(f"{path}: too large ({im.width}x{im.height} pixels, the limit is {MAX_PIXELS})")
                im.seek(0)  # first frame of animations
                im = ImageOps.exif_transpose(im)
                im = _to_mode(im, c)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{path}: too large to decode safely (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"{path}: cannot decode image ({e})") from None
    x = torch.from_numpy(arr.copy()).float().div_(255)
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    if invert == "yes" or (invert == "auto" and border_mean(x) > 0.5 and background < 0.5):
        x = 1.0 - x
    return x.contiguous()


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grayscale -> 8-bit
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / hi * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))  # transparent -> black, like MNIST's background
        im = Image.alpha_composite(bg, im)
    return im.convert("L" if channels == 1 else "RGB")


def border_mean(x: torch.Tensor) -> float:
    """Mean of the outermost rows and columns of images (..., H, W) with values in [0, 1]."""
    return float(torch.cat([x[..., 0, :].flatten(), x[..., -1, :].flatten(),
                            x[..., :, 0].flatten(), x[..., :, -1].flatten()]).float().mean())
