"""Benchmark: several seeds in one process (``gencls train --seeds``), improved-gan on MNIST.

For S seeds it times, on real MNIST batches drawn on the device as the trainer draws them:
``separate``, one seed's optimised step (S separate runs take S times as long); ``in-turn``, the S
seeds' steps one after another in one process (``--stack-seeds off``); ``stacked``, the S seeds as
one batched model (``--stack-seeds on``: every layer one batched product over the seeds). It
reports ms per step of all S seeds, images/s summed over the seeds, and the speed-up of each
against S separate steps. Writes one JSON file and prints a table.

    python benchmarks/seeds_speed.py --seeds 5                       # CPU, ~2 minutes
    python benchmarks/seeds_speed.py --device cuda --seeds 1,5,10 --precision bf16
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import gencls  # noqa: F401 -- before torch: the OpenMP spin count the command line runs with
import torch


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(n_seeds: int, device: str, precision: str, steps: int, warmup: int, data_root, batch: int = 100) -> dict:
    from gencls.data import load_split
    from gencls.methods import StepGuard, create_method
    from gencls.training.trainer import DeviceImages
    from gencls.utils import autocast_for, resolve_device

    dev = resolve_device(device)
    data = load_split("mnist", "train", data_root, log=lambda *_: None)
    x_all = DeviceImages(data.images, dev)  # uint8 on the device, as the trainer holds it
    y_all = data.labels.to(dev)
    gen = torch.Generator().manual_seed(2)

    def build():
        methods = []
        for s in range(n_seeds):
            torch.manual_seed(s + 1)
            m = create_method("improved-gan", {}, data.image_shape, len(data.classes)).to(dev).train()
            m.guard.lazy = True
            m.setup(x_all[torch.randperm(len(x_all), generator=gen)[:500].to(dev)])
            methods.append(m)
        return methods

    autocast = autocast_for(dev, precision)
    total = warmup + steps
    lab = torch.randint(0, len(x_all), (total, n_seeds, batch), generator=gen).to(dev)
    unl = torch.randint(0, len(x_all), (total, n_seeds, 2 * batch), generator=gen).to(dev)

    def timed(step) -> float:
        for i in range(warmup):
            step(i)
        _sync(dev)
        t = time.perf_counter()
        for i in range(warmup, total):
            step(i)
        _sync(dev)
        return (time.perf_counter() - t) / steps

    methods = build()

    def separate(i):  # one seed
        with autocast():
            methods[0].train_step(x_all[lab[i, 0]], y_all[lab[i, 0]], x_all[unl[i, 0]])

    def in_turn(i):
        with autocast():
            for s, m in enumerate(methods):
                m.train_step(x_all[lab[i, s]], y_all[lab[i, s]], x_all[unl[i, s]])

    one = timed(separate)
    turn = timed(in_turn)
    methods = build()
    stack = type(methods[0]).stack(methods, StepGuard(lazy=True))

    def stacked(i):
        with autocast():
            stack.train_step(x_all[lab[i]], y_all[lab[i]], x_all[unl[i]])

    st = timed(stacked)
    rec = {"seeds": n_seeds, "separate_ms_per_seed_step": 1000 * one}
    for name, sec in (("in_turn", turn), ("stacked", st)):
        rec[name] = {"ms_per_step_all_seeds": 1000 * sec, "images_per_second": n_seeds * batch / sec,
                     "speedup_vs_separate": n_seeds * one / sec}
    return rec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--seeds", default="5", help="comma-separated numbers of seeds to try (default 5)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CPU, 200 CUDA)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--data-root")
    p.add_argument("--out", default="runs/seeds_speed.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (200 if args.device.startswith("cuda") else 20)
    rows = [measure(int(s), args.device, args.precision, steps, args.warmup, args.data_root)
            for s in args.seeds.split(",")]
    dev = torch.device(args.device)
    result = {"benchmark": "seeds_speed", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda"
              else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "precision": args.precision, "steps": steps, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("| seeds | separate ms/step (one seed) | in turn ms/step (all) | speed-up | stacked ms/step (all) "
          "| speed-up | stacked img/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        t, s = r["in_turn"], r["stacked"]
        print(f"| {r['seeds']} | {r['separate_ms_per_seed_step']:.1f} | {t['ms_per_step_all_seeds']:.1f} | "
              f"{t['speedup_vs_separate']:.2f}x | {s['ms_per_step_all_seeds']:.1f} | {s['speedup_vs_separate']:.2f}x | "
              f"{s['images_per_second']:,.0f} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
