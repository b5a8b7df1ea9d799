"""Export a trained run to one self-contained ONNX file, checked against PyTorch.

- ``part="classifier"``: input ``image`` (batch, C, H, W) float32 in [0, 1]; outputs ``logits``,
  ``probabilities`` and ``ood_score`` (higher = more like the training data).
- ``part="generator"``: input ``z`` (batch, latent dim) drawn from the method's latent
  distribution (and ``label`` (batch,) int64 for class-conditional methods); output ``image``.

The batch dimension is dynamic. Everything ``gencls predict --onnx`` needs (class names, image
shape, background, the out-of-distribution threshold and score name, the latent distribution) is
stored in the model's metadata, so the file is all a deployment needs. The file is written to a
temporary name, compared with PyTorch on ``n_check`` inputs (test images for the classifier,
seeded latents for the generator), and moved into place only if the largest absolute difference
is at most ``tolerance``.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gencls.errors import GenclsError

TOLERANCE = 1e-4
OPSET = 17
PARTS = ("classifier", "generator")


class ClassifierGraph(nn.Module):
    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, image):
        logits, score = self.method.classify_and_score(image)
        return logits, logits.softmax(1), score


class GeneratorGraph(nn.Module):
    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, z, label=None):
        return self.method.decode_latent(z, label)


def _metadata(run, part: str) -> dict[str, str]:
    from gencls import __version__

    meta: dict[str, Any] = {"gencls_version": __version__, "part": part, "method": run.config.method,
                            "dataset": run.config.dataset, "classes": run.classes,
                            "image_shape": list(run.image_shape), "background": run.background,
                            "checkpoint_epoch": run.meta.get("epoch")}
    if part == "classifier":
        cal = run.ood
        meta["ood"] = {k: cal[k] for k in ("score", "threshold", "percentile", "calibrated_on", "higher_means")}
    else:
        meta["latent_dim"] = int(run.method.sample_latent(1).shape[1])
        meta["latent_distribution"] = run.method.latent_distribution
        meta["conditional"] = bool(run.method.can_condition)
    return {"gencls": json.dumps(meta)}


def _inference_copy(method):
    """A CPU copy of the method in eval mode with every parametrization (spectral norm) baked into
    a plain weight: the exporter cannot trace spectral norm's ``vdot``, and at inference the
    parametrized weight is a constant anyway. The caller's model stays where it was."""
    from torch.nn.utils import parametrize

    method = copy.deepcopy(method).cpu().eval()
    # every value first: deep copies of a parametrized module share its generated class, so
    # torch's remove_parametrizations on one breaks the others (an EMA copy, here)
    with torch.no_grad():
        baked = [(m, {name: getattr(m, name).detach().clone() for name in m.parametrizations})
                 for m in method.modules() if parametrize.is_parametrized(m)]
    for m, tensors in baked:
        m.__class__ = m.__class__.__bases__[0]  # the module's own class, before parametrize wrapped it
        delattr(m, "parametrizations")
        for name, t in tensors.items():
            m.register_parameter(name, nn.Parameter(t, requires_grad=False))
    return method


def _save_onnx(graph: nn.Module, args: tuple, path: Path, input_names, output_names, metadata: dict[str, str]):
    import onnx

    dynamic = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        try:
            torch.onnx.export(graph, args, str(path), dynamo=False, input_names=list(input_names),
                              output_names=list(output_names), dynamic_axes=dynamic, opset_version=OPSET,
                              do_constant_folding=True)
        except Exception as e:  # noqa: BLE001 - an operator ONNX lacks: one line, not a traceback
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise GenclsError(f"this model cannot be exported to ONNX opset {OPSET}: {first}") from None
    model = onnx.load(str(path))
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.doc_string = "gencls export: see the 'gencls' metadata entry"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_onnx(run, out: str | Path, part: str = "classifier", n_check: int = 1000, data_root: str | None = None,
                tolerance: float = TOLERANCE, log=print) -> dict[str, Any]:
    """Export ``part`` of a run to ``out``; returns the check's figures. Raises on a mismatch."""
    import onnxruntime as ort

    from gencls.api import _as_run, ood_calibration

    run = _as_run(run)
    if part not in PARTS:
        raise GenclsError(f"--part {part}: one of {', '.join(PARTS)}")
    method = _inference_copy(run.method)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    if part == "classifier":
        ood_calibration(run, data_root=data_root, log=log)
        from gencls.data.datasets import load_run_split

        test = load_run_split(run.config, "test", data_root, log=log)
        x = test.images[:n_check].float().div(255)
        graph, example = ClassifierGraph(method), (x[:2],)
        inputs, outputs = ("image",), ("logits", "probabilities", "ood_score")
        feeds = {"image": x.numpy()}
        with torch.no_grad():
            expected = [t.numpy() for t in graph(x)]
    else:
        if not method.can_generate:
            raise GenclsError(f"--part generator: method {method.name} has no generator")
        z = method.sample_latent(n_check, gen)
        graph = GeneratorGraph(method)
        if method.can_condition:
            labels = torch.randint(0, len(run.classes), (n_check,), generator=gen)
            example, inputs, feeds = (z[:2], labels[:2]), ("z", "label"), {"z": z.numpy(), "label": labels.numpy()}
        else:
            labels = None
            example, inputs, feeds = (z[:2],), ("z",), {"z": z.numpy()}
        outputs = ("image",)
        with torch.no_grad():
            expected = [graph(z, labels).numpy()]
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        graph.eval()
        _save_onnx(graph, example, Path(tmp), inputs, outputs, _metadata(run, part))
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = session.run(list(outputs), feeds)
        diffs = {name: float(np.abs(g - e).max()) if e.size else 0.0 for name, g, e in zip(outputs, got, expected)}
        worst = max(diffs.values())
        report = {"path": str(out), "part": part, "n_checked": int(next(iter(feeds.values())).shape[0]),
                  "max_abs_diff": worst, "max_abs_diff_by_output": diffs, "tolerance": tolerance,
                  "bytes": os.path.getsize(tmp), "opset": OPSET}
        if not worst <= tolerance:
            raise GenclsError(f"ONNX export of the {part} differs from PyTorch by {worst:.3g} "
                              f"(> {tolerance:g}) on {report['n_checked']} inputs; not written")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; give it a normal file's mode
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return report
