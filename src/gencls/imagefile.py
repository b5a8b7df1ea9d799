"""Decoding users' image files and uploads into model inputs, with numpy and PIL only.

This module imports no PyTorch, so that the ONNX Runtime path (``gencls predict --onnx``) runs
where PyTorch is not installed; ``gencls.data.load_image`` wraps it into tensors.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gencls.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
MAX_PIXELS = 50_000_000  # refuse decompression bombs before decoding


class TooManyPixels(InputError):
    """An image whose header announces more pixels than allowed (checked before decoding)."""


def find_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively, image suffixes only, sorted); keep files as given."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def decode_image(source: str | os.PathLike | bytes, image_shape: tuple[int, int, int], invert: str = "auto",
                 background: float = 0.0, max_pixels: int = MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """An image file (path) or its bytes -> float32 array (C, H, W) in [0, 1], converted like the training data.

    ``invert``: "auto" inverts an image whose border is bright when the training images have a
    dark background (``background`` is their mean border value), "yes" or "no" force it.
    Raises ``InputError`` (``TooManyPixels`` for images over ``max_pixels``) for anything that is
    not a readable image; ``name`` is how the messages refer to it.
    """
    c, h, w = image_shape
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "upload"
        if len(source) == 0:
            raise InputError(f"{label}: empty file")
        fp = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        label = name or str(path)
        if not path.exists():
            raise InputError(f"{label}: no such file")
        if path.is_dir():
            raise InputError(f"{label}: is a folder")
        fp = path
    try:
        with _open(fp) as im:
            if im.width * im.height > max_pixels:
                raise TooManyPixels(f"{label}: too large ({im.width}x{im.height} pixels, the limit is {max_pixels})")
            im.seek(0)  # first frame of animations
            im = ImageOps.exif_transpose(im)
            im = _to_mode(im, c)
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooManyPixels(f"{label}: too large to decode safely (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise InputError(f"{label}: not a readable image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"{label}: cannot decode image ({e})") from None
    x = arr.astype(np.float32) / 255.0
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    if invert == "yes" or (invert == "auto" and border_mean_np(x) > 0.5 and background < 0.5):
        x = 1.0 - x
    return np.ascontiguousarray(x, dtype=np.float32)


# warnings.catch_warnings() swaps the process's one list of filters: two threads inside it at once (the
# server decodes uploads in a thread pool) can leave the other's filter in place for good or drop it early
_WARNINGS_LOCK = threading.Lock()


def _open(fp) -> Image.Image:
    """``Image.open`` (the header only) with PIL's decompression-bomb warning raised as an error."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(fp)


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integer or float grayscale -> 8-bit
        im = _to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:  # alpha channel or tRNS: the same
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))  # transparent -> black, like MNIST's background
        im = Image.alpha_composite(bg, im)
    return im.convert("L" if channels == 1 else "RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float grayscale image -> "L" (or "LA" when it has a transparent value),
    scaled by the range of its type, so that one value always gives one gray whatever else is in the image:

    - ``I;16*`` (16-bit): value / 65535;
    - ``I`` (32-bit integer; 16-bit PNGs and TIFFs may open this way): value / 65535 when every value is
      within 0..65535; 32-bit data beyond that has no standard range and is scaled by its own maximum;
    - ``F`` (float): used as is when every value is within [0, 1], else value / 255; NaN and infinities
      count as 0.

    Negative values count as 0 and the result is clipped to [0, 1]."""
    a = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        x = a if a.size == 0 or (a.min() >= 0 and a.max() <= 1) else a / 255.0
    elif im.mode.startswith("I;16"):
        x = a / 65535.0
    else:
        top = a.max() if a.size else 0.0
        x = a / (65535.0 if top <= 65535 else top)
    gray = Image.fromarray((np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8), "L")
    t = im.info.get("transparency")
    if isinstance(t, (int, float)) and not isinstance(t, bool):  # a tRNS gray value, in the image's own units
        alpha = Image.fromarray(np.where(np.asarray(im) == t, 0, 255).astype(np.uint8), "L")
        gray = Image.merge("LA", (gray, alpha))
    return gray


def border_mean_np(x: np.ndarray) -> float:
    """Mean of the outermost rows and columns of images (..., H, W) with values in [0, 1]."""
    return float(np.concatenate([x[..., 0, :].ravel(), x[..., -1, :].ravel(),
                                 x[..., :, 0].ravel(), x[..., :, -1].ravel()]).astype(np.float64).mean())


def png_grid(images: np.ndarray, nrow: int = 10, padding: int = 2, pad_value: float = 0.5) -> bytes:
    """Images (N, C, H, W) in [0, 1] -> PNG bytes of a grid (like torchvision's save_image)."""
    n, c, h, w = images.shape
    cols = max(1, min(nrow, n))
    rows = -(-n // cols)
    grid = np.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value, np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, y : y + h, x : x + w] = images[i]
    arr = (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(arr[0], "L") if c == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
