"""Benchmark: data-parallel training speed, N processes under torchrun against 1 process.

Trains ``improved-gan`` on MNIST (a training subset, so an epoch is short) with the same
settings in each configuration and reads the last epoch's time from the run's metrics
(images/s counts the images of all processes). Configurations:

- ``1 proc``: one process, batch B, ``--threads T1``;
- ``1 proc, batch N*B``: one process with the global batch of the parallel run;
- ``N procs``: ``torchrun --standalone --nproc_per_node N``, batch B per process, 1 thread each
  (gloo on CPU, NCCL with ``--device cuda``).

The full-MNIST epoch estimate scales the measured seconds per step to 55,000 unlabelled images
(``55000 // (B * processes)`` steps).

    python benchmarks/ddp_speed.py --nproc 2 --out docs/benchmarks/ddp_speed_cpu.json
    # several GPUs (one process per GPU):
    python benchmarks/ddp_speed.py --device cuda --nproc 8 --threads 4 --subset 60000 --val-size 5000 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FULL_UNLABELLED = 55000


def run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, text=True, capture_output=True)
    if r.returncode:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=100, help="per process")
    p.add_argument("--subset", type=int, default=11000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2, help="the last epoch is timed (the first warms up)")
    p.add_argument("--method", default="improved-gan")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="threads of the single process (default: --nproc)")
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args()
    threads1 = args.threads or args.nproc
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    common = ["--method", args.method, "--labels", "100", "--subset", str(args.subset), "--val-size", str(args.val_size),
              "--epochs", str(args.epochs), "--device", args.device, "--no-progress", "--no-tensorboard", "--seed", "1"]
    gencls = [sys.executable, "-m", "gencls", "train"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
                "-m", "gencls", "train"]
    configs = [
        ("1 proc", gencls, args.batch_size, threads1, 1),
        (f"1 proc, batch {args.nproc * args.batch_size}", gencls, args.nproc * args.batch_size, threads1, 1),
        (f"{args.nproc} procs", torchrun, args.batch_size, 1, args.nproc),
    ]
    if threads1 != 1:
        configs.insert(1, ("1 proc, 1 thread", gencls, args.batch_size, 1, 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, cmd, batch, threads, procs) in enumerate(configs):
            out = Path(tmp) / f"run{i}"
            wall = run([*cmd, *common, "--batch-size", str(batch), "--threads", str(threads), "--out", str(out)], env)
            last = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()][-1]
            cfg = json.loads((out / "config.json").read_text())
            steps = last["step"] // args.epochs
            per_step = last["epoch_seconds"] / steps
            global_batch = batch * procs
            rows.append({"config": name, "processes": procs, "threads_per_process": threads,
                         "batch_per_process": batch, "global_batch": global_batch, "steps_per_epoch": steps,
                         "epoch_seconds": last["epoch_seconds"], "seconds_per_step": per_step,
                         "images_per_second": last["images_per_second"],
                         "full_mnist_epoch_seconds": per_step * (FULL_UNLABELLED // global_batch),
                         "val_error": last["val_error"], "world_size": cfg.get("world_size", 1), "wall_seconds": wall})
    print(f"{'config':<24}{'procs x threads':>16}{'batch':>8}{'s/step':>9}{'images/s':>10}{'s/epoch (55k)':>15}")
    for r in rows:
        print(f"{r['config']:<24}{r['processes']:>9} x {r['threads_per_process']:<4}{r['global_batch']:>8}"
              f"{r['seconds_per_step']:>9.4f}{r['images_per_second']:>10.0f}{r['full_mnist_epoch_seconds']:>15.1f}")
    result = {"benchmark": "ddp_speed", "method": args.method, "device": args.device, "subset": args.subset,
              "epochs": args.epochs, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                 "python": platform.python_version()},
              "note": "images/s counts the images of all processes; the last epoch is timed",
              "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
