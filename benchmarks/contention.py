"""Benchmark: the improved-gan step alone and beside a second training, for two OpenMP spin counts.

PyTorch's CPU threads (GNU OpenMP) spin while they wait for the next parallel region. libgomp's
default is up to 300,000 spins; ``import gencls`` sets ``GOMP_SPINCOUNT=1000`` unless the user
set it or ``OMP_WAIT_POLICY``. This measures why, on this machine: for each spin count, the
optimised MNIST step (batch 100, random images: the speed does not depend on them) timed

- ``alone``: nothing else running;
- ``beside``: while a second process runs the same step in a loop with the same setting (two
  trainings at once, or a training beside the test suite). A fair share of the cores would make
  the step about 2x slower than alone.

Each measurement is a fresh process (libgomp reads the setting when it loads); ``--rounds N``
alternates the settings N times and reports the median. Writes one JSON and prints a table.

    python benchmarks/contention.py --rounds 3 --out docs/benchmarks/contention-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {"libgomp default (300000)": "300000", "gencls (1000)": "1000"}


def child(threads: int, steps: int, forever: bool) -> None:
    import gencls  # noqa: F401 -- as the command line imports it (GOMP_SPINCOUNT comes from the parent here)
    import torch

    from gencls.methods import create_method

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = create_method("improved-gan", {}, (1, 28, 28), 10).train()
    m.guard.lazy = True
    m.setup(torch.rand(500, 1, 28, 28))
    x, y, u = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,)), torch.rand(200, 1, 28, 28)
    for _ in range(3):
        m.train_step(x, y, u)
    while forever:
        m.train_step(x, y, u)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        m.train_step(x, y, u)
    print(json.dumps({"ms_per_step": (time.perf_counter() - t) / steps * 1e3,
                      "cpu_ms_per_step": (time.process_time() - c) / steps * 1e3}))


def measure(spin: str, beside: bool, threads: int, steps: int) -> dict:
    env = {**os.environ, "GOMP_SPINCOUNT": spin}
    env.pop("OMP_WAIT_POLICY", None)
    cmd = [sys.executable, __file__, "--child", "--threads", str(threads)]
    other = None
    if beside:
        other = subprocess.Popen(cmd + ["--forever"], env=env, stdout=subprocess.DEVNULL)
        time.sleep(5)  # it is stepping when the timed process starts
    try:
        out = subprocess.run(cmd + ["--steps", str(steps)], env=env, capture_output=True, text=True, check=True)
    finally:
        if other is not None:
            other.kill()
            other.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=60, help="timed steps alone (a third of them beside)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="runs/contention.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.threads, args.steps, args.forever)

    rounds = []
    for r in range(args.rounds):
        row = {}
        for name, spin in SETTINGS.items():
            for beside in (False, True):
                key = f"{name}, {'beside a second training' if beside else 'alone'}"
                row[key] = measure(spin, beside, args.threads, args.steps // 3 if beside else args.steps)
                print(f"round {r + 1}: {key}: {row[key]['ms_per_step']:.1f} ms/step", flush=True)
        rounds.append(row)
    median = {k: statistics.median(rd[k]["ms_per_step"] for rd in rounds) for k in rounds[0]}
    result = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "threads": args.threads, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "load_average_at_start": os.getloadavg(), "rounds": rounds, "median_ms_per_step": median}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n| spin count | alone ms/step | beside a second training ms/step | slow-down |\n|---|---|---|---|")
    for name in SETTINGS:
        a, b = median[f"{name}, alone"], median[f"{name}, beside a second training"]
        print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.1f}x |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
