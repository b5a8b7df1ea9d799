"""Summarise finished runs of one protocol over seeds: each run's best-validation checkpoint is
evaluated once on the test set (and, for reference, its last checkpoint), and the mean and sample
standard deviation (n - 1) over seeds are written as JSON and printed as a table.

    python benchmarks/protocol_seeds.py runs/ig-seed1 runs/ig-seed2 runs/ig-seed3 \
        --out docs/benchmarks/improved-gan-mnist100-cpu-bf16-300ep-seeds.json

Model selection stays on validation: the test figures are only read for the report.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import gencls  # noqa: F401  (before torch: sets the OpenMP spin count)
from gencls.api import evaluate, load_run
from gencls.training.runlog import read_metrics


def summarise(run_dirs: list[Path], log=print) -> dict:
    runs = []
    for d in run_dirs:
        best = load_run(d)
        test = evaluate(best, "test", log=lambda s: None)  # writes eval.json for the best checkpoint
        last = evaluate(load_run(d, which="last"), "test", write=False, log=lambda s: None)
        rows = read_metrics(d)
        secs = sorted(r["epoch_seconds"] for r in rows)
        runs.append({"run": str(d), "seed": best.config.seed, "data_seed": best.config.data_seed,
                     "epochs": len(rows), "best_epoch": best.meta["epoch"],
                     "best_val_error_percent": 100 * best.meta["val_error"],
                     "test_error_percent": test["error_percent"],
                     "test_error_percent_last_epoch": last["error_percent"],
                     "median_epoch_seconds": secs[len(secs) // 2] if secs else None})
        log(f"{d}: seed {runs[-1]['seed']}, best validation {runs[-1]['best_val_error_percent']:.2f}% at epoch "
            f"{runs[-1]['best_epoch']}, test {runs[-1]['test_error_percent']:.2f}% "
            f"(last epoch {runs[-1]['test_error_percent_last_epoch']:.2f}%)")

    def stats(key: str) -> dict:
        v = [r[key] for r in runs]
        return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else None, "n": len(v)}
    return {"runs": runs, "test_error_percent": stats("test_error_percent"),
            "test_error_percent_last_epoch": stats("test_error_percent_last_epoch"),
            "best_val_error_percent": stats("best_val_error_percent"),
            "std": "sample standard deviation over seeds (n - 1)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders, one per seed")
    p.add_argument("--out", type=Path, help="JSON file to write")
    args = p.parse_args(argv)
    s = summarise(args.runs)
    t, last = s["test_error_percent"], s["test_error_percent_last_epoch"]
    fmt = lambda x: f"{x['mean']:.2f}" + (f" ± {x['std']:.2f}" if x["std"] is not None else "")  # noqa: E731
    print(f"\ntest error over {t['n']} seed(s), best-validation checkpoints: {fmt(t)} %  "
          f"(last epoch: {fmt(last)} %; std: sample, n - 1)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(s, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
