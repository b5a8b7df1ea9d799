"""Benchmark: train a method on MNIST for some epochs or minutes; write JSON with seconds per
epoch, images per second, peak RSS, and validation and test error after every epoch.

Reading the test set every epoch is for this learning-curve benchmark only: the run's model
selection (``best``) still uses the validation split.

    python benchmarks/mnist_ssl.py --method improved-gan --labels 100 --minutes 30 --out runs/bench.json
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import gencls  # before torch: the OpenMP spin count the command line runs with
import torch

from gencls.data import load_split
from gencls.training.trainer import error_rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="improved-gan")
    p.add_argument("--labels", default="100")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--minutes", type=float, help="time budget (checked at epoch ends)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--run-dir", default=None, help="run folder (default: next to --out)")
    p.add_argument("--out", default="runs/bench.json")
    args = p.parse_args()
    if args.minutes is None and args.epochs == 1000:
        p.error("give --epochs or --minutes")

    out = Path(args.out)
    run_dir = Path(args.run_dir or out.with_suffix(""))
    test = load_split("mnist", "test")
    x_test, y_test = test.images.float() / 255, test.labels
    rows: list[dict] = []
    t_start = time.time()

    def on_epoch_end(record, method):
        rec = dict(record)
        rec["test_error"] = error_rate(method, x_test.to(method.device), y_test.to(method.device))
        rec["elapsed_minutes"] = (time.time() - t_start) / 60
        rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(rec)
        print(f"[bench] epoch {rec['epoch']}: {rec['epoch_seconds']:.1f}s, {rec['images_per_second']:.0f} img/s, "
              f"val {100 * rec['val_error']:.2f}%, test {100 * rec['test_error']:.2f}%, "
              f"{rec['elapsed_minutes']:.1f} min", flush=True)
        write()

    def write():
        secs = [r["epoch_seconds"] for r in rows]
        summary = {
            "method": args.method, "labels": args.labels, "seed": args.seed, "data_seed": args.data_seed,
            "device": str(gencls.utils.resolve_device(args.device)), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "epochs": len(rows), "seconds_per_epoch": sum(secs) / len(secs) if secs else None,
            "images_per_second": sum(r["images_per_second"] for r in rows) / len(rows) if rows else None,
            "peak_rss_mb": max((r["peak_rss_mb"] for r in rows), default=None),
            "per_epoch": rows,
        }
        for minutes in (10, 30, 60):
            done = [r for r in rows if r["elapsed_minutes"] <= minutes]
            summary[f"test_error_after_{minutes}_min"] = done[-1]["test_error"] if done else None
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")

    cfg = gencls.TrainConfig(method=args.method, labels=args.labels, epochs=args.epochs, minutes=args.minutes,
                             seed=args.seed, data_seed=args.data_seed, device=args.device, threads=args.threads,
                             out=str(run_dir), progress=False)
    gencls.train(cfg, overwrite=True, on_epoch_end=on_epoch_end)
    write()
    print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
