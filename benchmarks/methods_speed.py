"""Benchmark: the training step of every registered method on MNIST shapes, ms/step and s/epoch.

Each method is built as ``gencls train`` builds it (default settings, 28x28 grey images, 10
classes), set up on a batch, and its ``train_step`` timed with the trainer's lazy guard on batches
of 100 labelled + 100 unlabelled images per unlabelled stream (random pixels: the speed does not
depend on them), each method in its own process. ``--src`` times another checkout's ``src``
folder instead (before/after comparisons; ``--rounds`` alternates them). Writes one JSON and
prints a table.

    python benchmarks/methods_speed.py --threads 2 --steps 30
    python benchmarks/methods_speed.py --device cuda --steps 200
    python benchmarks/methods_speed.py --src /tmp/old/src --src src --rounds 3 --out runs/methods.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ITERS_PER_EPOCH = 550  # MNIST-100: 55,000 unlabelled images / batch 100


def child(method: str, threads: int, steps: int, batch: int, device: str) -> None:
    import gencls  # noqa: F401 -- first, as the command line imports it
    import torch

    from gencls.methods import create_method

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    m = create_method(method, {}, (1, 28, 28), 10).to(dev).train()
    m.guard.lazy = True
    m.setup(torch.rand(500, 1, 28, 28, device=dev))
    n_unl = batch * max(type(m).unlabelled_batches, 1)
    x, y, u = (torch.rand(batch, 1, 28, 28, device=dev), torch.randint(0, 10, (batch,), device=dev),
               torch.rand(n_unl, 1, 28, 28, device=dev))
    for _ in range(3):
        m.train_step(x, y, u)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t = time.perf_counter()
    for _ in range(steps):
        losses = m.train_step(x, y, u)
    m.guard.check()  # waits for the queued steps
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    ms = (time.perf_counter() - t) / steps * 1e3
    assert all(torch.isfinite(v).all() for v in losses.values())
    print(json.dumps({"ms_per_step": ms, "seconds_per_epoch": ms * ITERS_PER_EPOCH / 1e3}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="improved-gan,acgan,vae-m2,aae,supervised")
    p.add_argument("--src", action="append", help="a checkout's src folder to time (repeatable; default: this one)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default="runs/methods_speed.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.threads, args.steps, args.batch, args.device)

    srcs = args.src or [str(Path(__file__).resolve().parent.parent / "src")]
    methods = args.methods.split(",")
    rounds = []
    for r in range(args.rounds):
        row = {}
        for method in methods:
            for src in srcs:
                env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
                out = subprocess.run([sys.executable, __file__, "--child", method, "--threads", str(args.threads),
                                      "--steps", str(args.steps), "--batch", str(args.batch), "--device", args.device],
                                     env=env, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{method} ({src}) failed:\n{out.stderr[-2000:]}")
                row[f"{method} | {src}"] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"round {r + 1}: {method} ({src}): {row[f'{method} | {src}']['ms_per_step']:.1f} ms/step",
                      flush=True)
        rounds.append(row)
    median = {k: statistics.median(rd[k]["ms_per_step"] for rd in rounds) for k in rounds[0]}
    result = {"device": args.device, "threads": args.threads, "cpu_count": os.cpu_count(), "batch": args.batch, "steps": args.steps,
              "time": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_at_start": os.getloadavg(),
              "srcs": srcs, "rounds": rounds, "median_ms_per_step": median}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    head = " | ".join(f"{s} ms/step (s/epoch)" for s in srcs)
    print(f"\n| method | {head} |\n|---|" + "---|" * len(srcs))
    for method in methods:
        cells = [f"{median[f'{method} | {s}']:.1f} ({median[f'{method} | {s}'] * ITERS_PER_EPOCH / 1e3:.1f})"
                 for s in srcs]
        print(f"| {method} | " + " | ".join(cells) + " |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
