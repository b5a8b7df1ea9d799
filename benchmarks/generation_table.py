"""Figures of the generation metrics: AC-GAN with 100 labels and with all labels, and Improved-GAN
with 100 labels, each trained for the same CPU budget, then measured with the in-domain metrics.

Writes a table (test error, FID, KID, classifier score, label consistency, CAS) as JSON and
Markdown, and each model's per-class sample grid as a small PNG, into --docs:

    python benchmarks/generation_table.py --minutes 4 --threads 1 --docs docs

Improved-GAN cannot generate a chosen class: its grid shows its samples sorted into rows by the
feature network's classification (the first 10 of each class among 2000 samples).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import gencls  # before torch: the OpenMP spin count the command line runs with
import torch

from gencls.evaluation import featurenet
from gencls.training.runlog import read_metrics, save_labelled_grid

MODELS = [("acgan", 100), ("acgan", "all"), ("improved-gan", 100)]


def per_class_grid(run, fnet, path: Path, per_class: int = 10, seed: int = 0) -> None:
    if run.method.can_condition:
        images, rows = gencls.generate_per_class(run, per_class, seed=seed)
    else:
        pool = gencls.generate(run, n=2000, seed=seed)
        pred = fnet.logits_from_features(fnet.features(pool)).argmax(1)
        picked, rows = [], []
        for c, name in enumerate(run.classes):
            idx = (pred == c).nonzero().flatten()[:per_class]
            row = pool[idx]
            if len(row) < per_class:  # a class the generator hardly makes: pad with blanks
                row = torch.cat([row, torch.zeros(per_class - len(row), *pool.shape[1:])])
            picked.append(row)
            rows.append(name)
        images = torch.cat(picked)
    save_labelled_grid(images, path, nrow=per_class, row_labels=rows, scale=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=4.0, help="training budget per model (checked at epoch ends)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=10000, help="generated images per model for the metrics")
    p.add_argument("--cas-epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", default="runs/generation-table", help="folder of the run folders")
    p.add_argument("--docs", default="docs", help="where the table and the grids go")
    p.add_argument("--models", default=",".join(f"{m}:{l}" for m, l in MODELS),
                   help="method:labels,... (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    docs, runs = Path(args.docs), Path(args.runs)
    docs.mkdir(parents=True, exist_ok=True)

    # 1. train every model within the same budget
    trained = []
    for spec in args.models.split(","):
        method, labels = spec.split(":")
        labels = labels if labels == "all" else int(labels)
        name, out = f"{method}-{labels}", runs / f"{method}-{labels}"
        t1 = time.time()
        gencls.train(gencls.TrainConfig(method=method, labels=labels, epochs=1000, minutes=args.minutes,
                                        seed=args.seed, data_seed=1, device="cpu", threads=args.threads, out=str(out),
                                        progress=False, tensorboard=False), overwrite=True)
        trained.append((name, method, labels, out, time.time() - t1))

    # 2. the feature network (cached after its first use), then the metrics of each model
    t0 = time.time()
    info = gencls.prepare_metrics("mnist")
    prepare_seconds = time.time() - t0
    fnet = featurenet.load_path(info["path"])
    print(f"[table] feature network: test accuracy {100 * info['test_accuracy']:.2f}%, trained in "
          f"{info['train_seconds']:.0f}s ({'cached' if info.get('cached') else 'just now'})", flush=True)
    rows = []
    for name, method, labels, out, train_seconds in trained:
        run = gencls.load_run(out)
        t2 = time.time()
        report = gencls.evaluate(run, generation=True, n=args.n, seed=0, cas_epochs=args.cas_epochs)
        g = report["generation"]
        grid = docs / f"samples_{name}.png"
        per_class_grid(run, fnet, grid)
        metrics = read_metrics(out)
        rows.append({"model": name, "method": method, "labels": labels, "epochs": len(metrics),
                     "best_epoch": report["checkpoint_epoch"], "train_seconds": round(train_seconds),
                     "eval_seconds": round(time.time() - t2), "test_error_percent": report["error_percent"],
                     "fid": g["fid"], "kid": g["kid"], "kid_std": g["kid_std"],
                     "classifier_score": g["classifier_score"], "label_consistency": g["label_consistency"],
                     "cas": g["cas"], "label_consistency_per_class": g["label_consistency_per_class"],
                     "grid": grid.name})
        print(f"[table] {name}: {json.dumps(rows[-1])}", flush=True)

    summary = {"budget_minutes_per_model": args.minutes, "threads": args.threads, "n_generated": args.n,
               "cas_epochs": args.cas_epochs, "machine": platform.processor() or platform.machine(),
               "torch": torch.__version__, "feature_net": {"test_accuracy": info["test_accuracy"],
                                                          "train_seconds": info["train_seconds"],
                                                          "prepare_seconds_this_run": prepare_seconds,
                                                          "threads": info.get("threads")},
               "classifier_score_real_test": g["classifier_score_real_test"], "rows": rows}
    (docs / "generation_table.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(summary)
    (docs / "generation_table.md").write_text(table)
    print(table)
    return 0


def markdown(s: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    lines = [f"Each model trained for {s['budget_minutes_per_model']:g} minutes on {s['threads']} CPU thread(s) "
             f"(stopping at the first epoch end after that); metrics on {s['n_generated']} generated images, "
             f"CAS classifier {s['cas_epochs']} epochs; feature network test accuracy "
             f"{100 * s['feature_net']['test_accuracy']:.2f}%; classifier score of the real test set "
             f"{s['classifier_score_real_test']:.2f}.", "",
             "| model | epochs | test error | FID | KID | classifier score | label consistency | CAS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        lines.append(f"| {r['model']} | {r['epochs']} | {r['test_error_percent']:.2f}% | {r['fid']:.2f} | "
                     f"{r['kid']:.4f} | {r['classifier_score']:.2f} | {pct(r['label_consistency'])} | {pct(r['cas'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
