"""Compare settings of one method by validation error after a number of steps (the README's
tables of `vae-m2` and `aae` settings): the trainer's batches (100 labelled + 100 unlabelled per
step, 550 steps an epoch on MNIST), the method's own ``train_step``, validation error every
``--every`` steps. Nothing is written but one JSON line per setting on stdout.

    python benchmarks/method_settings.py --method vae-m2 --steps 1650 --every 275 \\
        --set '{}' --set '{"alpha": 55, "lr": 0.001}'
"""
from __future__ import annotations

import argparse
import json
import time

import gencls  # noqa: F401 -- before torch: the OpenMP spin count the command line runs with
import torch

from gencls.data import load_split, make_split
from gencls.methods import create_method
from gencls.training.trainer import INIT_BATCH, DeviceImages, _epoch_batches, error_rate


def run(method: str, settings: dict, steps: int, every: int, seed: int, labels: int, batch: int, device: str) -> dict:
    data = load_split("mnist", "train")
    split = make_split(data.labels, labels, 5000, seed, num_classes=len(data.classes))
    x_all, y_all = DeviceImages(data.images, device), data.labels.to(device)
    x_val, y_val = x_all[split.validation.to(device)], y_all[split.validation.to(device)]
    torch.manual_seed(seed)
    m = create_method(method, settings, data.image_shape, len(data.classes)).to(device).train()
    gen = torch.Generator().manual_seed(seed)
    m.setup(x_all[split.unlabelled[torch.randperm(len(split.unlabelled), generator=gen)[:INIT_BATCH]].to(device)])
    iters = len(split.unlabelled) // batch
    curve, step, epoch, t0 = [], 0, 0, time.time()
    while step < steps:
        epoch += 1
        lab, unl = _epoch_batches(split, iters, batch, m.unlabelled_batches, seed, epoch)
        for i in range(min(iters, steps - step)):
            m.train_step(x_all[lab[i].to(device)], y_all[lab[i].to(device)],
                         None if unl is None else x_all[unl[i].to(device)])
            step += 1
            if step % every == 0 or step == steps:
                curve.append({"step": step, "epochs": round(step / iters, 3),
                              "val_error_percent": round(100 * error_rate(m, x_val, y_val), 2)})
    return {"method": method, "settings": settings, "seed": seed, "curve": curve,
            "seconds_per_step": (time.time() - t0) / steps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True)
    p.add_argument("--set", dest="settings", action="append", default=[], help="JSON settings (repeatable)")
    p.add_argument("--steps", type=int, default=1650)
    p.add_argument("--every", type=int, default=275)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for s in a.settings or ["{}"]:
        print(json.dumps(run(a.method, json.loads(s), a.steps, a.every, a.seed, a.labels, a.batch_size, a.device)),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
