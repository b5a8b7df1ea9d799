"""Classify image files with an exported ONNX model and ONNX Runtime: no PyTorch needed.

This module imports numpy, PIL and onnxruntime only (``gencls predict --onnx`` runs where PyTorch
is not installed). The model's metadata (written by ``gencls export``) gives the class names,
image shape, background and the out-of-distribution threshold.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gencls.errors import GenclsError, InputError
from gencls.imagefile import decode_image, find_images
from gencls.results import Prediction


class OnnxClassifier:
    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise GenclsError("onnxruntime is not installed (pip install onnxruntime)") from None
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such ONNX file")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            raw = self.session.get_modelmeta().custom_metadata_map.get("gencls")
            self.meta = json.loads(raw) if raw else None
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise InputError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
        if not self.meta or self.meta.get("part") != "classifier":
            raise InputError(f"{path}: not a gencls classifier export (make one with `gencls export RUN --format onnx`)")
        self.path = path
        self.classes: list[str] = list(self.meta["classes"])
        self.image_shape = tuple(self.meta["image_shape"])
        self.background = float(self.meta.get("background", 0.0))
        t = self.meta["ood"].get("threshold")
        self.threshold = None if t is None else float(t)  # None: exported from an uncalibrated run

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images (N, C, H, W) float32 in [0, 1] -> (logits, probabilities, ood scores)."""
        logits, probs, scores = self.session.run(["logits", "probabilities", "ood_score"],
                                                 {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return logits, probs, scores

    def predict(self, paths: list[str | os.PathLike], top_k: int = 3, invert: str = "auto",
                batch_size: int = 256) -> list[Prediction]:
        """Like ``gencls.predict``: one ``Prediction`` per file, unreadable files get ``error``."""
        files = find_images(paths)
        k = max(1, min(top_k, len(self.classes)))
        results: list[Prediction] = []
        for start in range(0, len(files), batch_size):
            arrays, slots = [], []
            for f in files[start : start + batch_size]:
                try:
                    arrays.append(decode_image(f, self.image_shape, invert=invert, background=self.background))
                    slots.append(len(results))
                    results.append(Prediction(str(f)))
                except InputError as e:
                    results.append(Prediction(str(f), error=str(e)))
            if not arrays:
                continue
            _, probs, scores = self.run(np.stack(arrays))
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            for slot, p, ix, s in zip(slots, probs, order, scores):
                r = results[slot]
                r.top_k = [(self.classes[i], float(p[i])) for i in ix]
                r.label, r.probability = r.top_k[0]
                r.ood_score = float(s)
                r.ood_flag = None if self.threshold is None else bool(s < self.threshold)
        return results
