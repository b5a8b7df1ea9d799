"""gencls: generative image classification.

Train a classifier together with a generative model from a few labelled and many unlabelled
images, evaluate it honestly, generate images, and classify files::

    import gencls
    run_dir = gencls.train(gencls.TrainConfig(method="improved-gan", labels=100, epochs=10, out="runs/a"))
    run = gencls.load_run(run_dir)
    print(gencls.evaluate(run)["error_percent"])
    gencls.evaluate_seeds("runs/s")["error_percent"]   # a `train --seeds` folder: mean and std over seeds
    gencls.evaluate_seeds("runs/s")["ensemble"]        # ... and the seeds as one ensemble
    gencls.predict(gencls.load_ensemble("runs/s"), ["digit.png"])   # classify with that ensemble
    probs = run.predict_proba(images)          # tensor (N, C, H, W) in [0, 1]
    results = gencls.predict(run, ["digit.png"])
    samples = gencls.generate(run, n=64, seed=0)
    gencls.compare(methods=["improved-gan", "vae-m2"], seeds=3, epochs=5, out="runs/cmp")
    gencls.report("runs/a")                      # runs/a/report.html (a compare folder works too)
"""
__version__ = "0.1.0"

import os as _os

# PyTorch's CPU threads (GNU OpenMP) spin up to 300,000 times waiting for the next parallel region
# before they sleep. When more threads want the cores than there are (two trainings, or a
# training beside the tests, on this 2-core machine), spinning threads take the cores from the
# ones with work: steps measured 4-5x slower (and up to 20x) instead of the 2x of a fair share.
# 1,000 spins is as fast for one process alone and gives the fair 2x under contention
# (README, "Speed"). libgomp reads this when torch loads, so it works where gencls is imported
# first (the command line, torchrun, compare's jobs); a user's own setting wins.
if "GOMP_SPINCOUNT" not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "1000"

from gencls.errors import GenclsError, InputError  # noqa: E402

# The rest is imported on first use, so that torch-free parts (``gencls.imagefile``,
# ``gencls.onnx_runtime``, the CLI's ``predict --onnx``) run where PyTorch is not installed.
_LAZY = {"Run": "gencls.api", "evaluate": "gencls.api", "generate": "gencls.api", "load_run": "gencls.api",
         "predict": "gencls.api", "train": "gencls.api", "TrainConfig": "gencls.config",
         "CompareConfig": "gencls.comparison", "compare": "gencls.comparison", "report": "gencls.reporting",
         "generate_per_class": "gencls.api", "interpolate": "gencls.api", "prepare_metrics": "gencls.api",
         "write_images": "gencls.api", "evaluate_seeds": "gencls.api", "Ensemble": "gencls.api",
         "load_ensemble": "gencls.api"}

__all__ = ["CompareConfig", "Ensemble", "GenclsError", "InputError", "Run", "TrainConfig", "__version__", "compare",
           "evaluate", "evaluate_seeds", "generate", "generate_per_class", "interpolate", "load_ensemble", "load_run",
           "predict", "prepare_metrics",
           "report", "train", "write_images"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in ("api", "comparison", "config", "data", "evaluation", "export", "methods", "nets", "reporting", "server",
                "training"):
        import importlib

        return importlib.import_module(f"gencls.{name}")
    raise AttributeError(f"module 'gencls' has no attribute {name!r}")
