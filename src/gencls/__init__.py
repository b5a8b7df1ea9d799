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
    gencls.compare(methods=["improved-gan", "vae-m2"], seeds=3, epochs=5, out="runs/cmp")
    gencls.report("runs/a")                      # runs/a/report.html (a compare folder works too)
"""
__version__ = "0.1.0"

from gencls.api import Run, evaluate, generate, load_run, predict, train  # noqa: E402
from gencls.compare import CompareConfig, compare  # noqa: E402
from gencls.config import TrainConfig  # noqa: E402
from gencls.errors import GenclsError, InputError  # noqa: E402
from gencls.report import report  # noqa: E402

__all__ = ["CompareConfig", "GenclsError", "InputError", "Run", "TrainConfig", "__version__", "compare", "evaluate",
           "generate", "load_run", "predict", "report", "train"]
