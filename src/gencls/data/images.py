"""Reading users' image files into model inputs, with one clear error per bad file.

The decoding itself lives in ``gencls.imagefile`` (numpy and PIL only, shared with the ONNX
Runtime path); this module turns its arrays into tensors.
"""
from __future__ import annotations

import os

import torch

from gencls.imagefile import IMAGE_SUFFIXES, MAX_PIXELS, decode_image, find_images  # noqa: F401  (re-exported)


def load_image(path: str | os.PathLike | bytes, image_shape: tuple[int, int, int], invert: str = "auto",
               background: float = 0.0, max_pixels: int = MAX_PIXELS, name: str | None = None) -> torch.Tensor:
    """One image file (or its bytes) -> float tensor (C, H, W) in [0, 1], converted like the training data.

    ``invert``: "auto" inverts an image whose border is bright when the training images have a
    dark background (``background`` is their mean border value), "yes" or "no" force it.
    Raises ``InputError`` for anything that is not a readable image.
    """
    return torch.from_numpy(decode_image(path, image_shape, invert, background, max_pixels, name))


def border_mean(x: torch.Tensor) -> float:
    """Mean of the outermost rows and columns of images (..., H, W) with values in [0, 1]."""
    return float(torch.cat([x[..., 0, :].flatten(), x[..., -1, :].flatten(),
                            x[..., :, 0].flatten(), x[..., :, -1].flatten()]).float().mean())
