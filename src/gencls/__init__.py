"""gencls: generative image classification.

Train a classifier together with a generative model from a few labelled and many unlabelled
images, evaluate it honestly, generate images, and classify files::

    import gencls
    run_dir = gencls.train(gencls.TrainConfig(method="improved-gan", labels=100, epochs=10, out="runs/a"))
    run = gencls.load_run(run_dir)
    print(gencls.evaluate(run)["error_percent"])
    probs = run.predict_proba(images)          # tensor (N, C, H, W) in [0, 1]
    results = gencls.predict(run, ["digit.png"])
    samples = gencls.generate(run, n=64, seed=0)
"""
__version__ = "0.1.0"

from gencls.api import (Run, evaluate, generate, generate_per_class, interpolate, load_run, predict,  # noqa: E402
                        prepare_metrics, train, write_images)
from gencls.config import TrainConfig  # noqa: E402
from gencls.errors import GenclsError, InputError  # noqa: E402

__all__ = ["GenclsError", "InputError", "Run", "TrainConfig", "__version__", "evaluate", "generate",
           "generate_per_class", "interpolate", "load_run", "predict", "prepare_metrics", "train", "write_images"]
