"""Command line: a thin layer over the Python API (``gencls.api``)."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from gencls.errors import GenclsError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (plus where to look) and exits 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _labels(value: str):
    if value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of labels or 'all'") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive (or 'all')")
    return n


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return n


def _nonneg_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return n


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return x


def _setting(value: str) -> tuple[str, object]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"{value!r}: expected KEY=VALUE")
    k, v = value.split("=", 1)
    try:
        parsed = json.loads(v)
    except json.JSONDecodeError:
        parsed = v
    return k.strip(), parsed


def _method_setting(value: str) -> tuple[str, str, object]:
    if "=" not in value or ":" not in value.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"{value!r}: expected METHOD:KEY=VALUE")
    method, rest = value.split(":", 1)
    k, v = _setting(rest)
    return method.strip(), k, v


def build_parser() -> argparse.ArgumentParser:
    from gencls.data import list_datasets
    from gencls.methods import list_methods

    p = _Parser(prog="gencls", description="Generative image classification: train, evaluate, generate, predict.")
    p.add_argument("--version", action="version", version=f"gencls {__import__('gencls').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("data", help="get datasets onto disk")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    f = dsub.add_parser("fetch", help="fetch a dataset into the data root")
    f.add_argument("dataset", choices=["mnist"])
    f.add_argument("--root", help="data root (default: $GENCLS_DATA, else ~/.cache/gencls)")

    t = sub.add_parser("train", help="train a method")
    t.add_argument("--method", default="improved-gan", help=f"one of: {', '.join(list_methods())}")
    t.add_argument("--dataset", default="mnist", help=f"one of: {', '.join(list_datasets())}")
    t.add_argument("--labels", type=_labels, default=100, help="labelled training images, balanced, or 'all'")
    t.add_argument("--epochs", type=_positive_int, default=10)
    t.add_argument("--minutes", type=_positive_float, help="stop at the first epoch end after this many minutes")
    t.add_argument("--seed", type=int, default=1, help="seed of the networks and the batch order")
    t.add_argument("--data-seed", type=int, default=1, help="seed of the labelled/validation split")
    t.add_argument("--val-size", type=_nonneg_int, default=5000, help="validation images carved from training")
    t.add_argument("--subset", type=_positive_int, help="use a random subset of this many training images")
    t.add_argument("--batch-size", type=_positive_int, default=100)
    t.add_argument("--set", dest="settings", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="a method setting, e.g. --set lr=0.001 (repeatable)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    t.add_argument("--threads", type=_positive_int, help="CPU threads (default: torch's choice)")
    t.add_argument("--data-root", help="data root (default: $GENCLS_DATA, else ~/.cache/gencls)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="delete an existing run in --out first")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")

    e = sub.add_parser("evaluate", help="evaluate a run's best checkpoint")
    e.add_argument("run")
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.add_argument("--data-root")

    g = sub.add_parser("generate", help="write a grid of generated images")
    g.add_argument("run")
    g.add_argument("--n", type=_positive_int, default=100)
    g.add_argument("--out", required=True, help="PNG file")
    g.add_argument("--seed", type=int)
    g.add_argument("--nrow", type=_positive_int, default=10, help="images per row")

    pr = sub.add_parser("predict", help="classify image files or folders")
    pr.add_argument("run")
    pr.add_argument("paths", nargs="+", metavar="PATH")
    pr.add_argument("--format", choices=["table", "csv", "json"], default="table")
    pr.add_argument("--top-k", type=_positive_int, default=3)
    pr.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                    help="invert light-background images to match dark-background training data (auto)")

    c = sub.add_parser("compare", help="train and evaluate several methods over several seeds, side by side")
    c.add_argument("--methods", default=",".join(list_methods()),
                   help=f"comma-separated, any of: {', '.join(list_methods())} (default: all)")
    c.add_argument("--dataset", default="mnist", help=f"one of: {', '.join(list_datasets())}")
    c.add_argument("--labels", type=_labels, default=100)
    c.add_argument("--seeds", type=_positive_int, default=3,
                   help="seeds 1..N; seed s also draws the labelled split (the same for every method)")
    c.add_argument("--epochs", type=_positive_int, default=10)
    c.add_argument("--minutes", type=_positive_float, help="per run: stop at the first epoch end after this many minutes")
    c.add_argument("--out", required=True, help="compare folder (rerun to resume: finished runs are kept)")
    c.add_argument("--jobs", type=_positive_int, default=1, help="runs trained in parallel processes")
    c.add_argument("--threads", type=_positive_int, help="CPU threads per run")
    c.add_argument("--val-size", type=_nonneg_int, default=5000)
    c.add_argument("--subset", type=_positive_int)
    c.add_argument("--batch-size", type=_positive_int, default=100)
    c.add_argument("--set", dest="settings", type=_method_setting, action="append", default=[],
                   metavar="METHOD:KEY=VALUE", help="a method setting, e.g. --set vae-m2:alpha=10 (repeatable)")
    c.add_argument("--device", default="auto")
    c.add_argument("--data-root")

    r = sub.add_parser("report", help="write a self-contained report.html for a run or a compare folder")
    r.add_argument("path", metavar="RUN_OR_COMPARE")
    r.add_argument("--out", help="HTML file (default: report.html in the folder)")
    r.add_argument("--data-root")

    sub.add_parser("methods", help="list the registered methods")
    return p


def cmd_data(args) -> int:
    from gencls.data import fetch_mnist

    if args.data_command != "fetch":
        raise GenclsError("usage: gencls data fetch mnist [--root DIR]")
    fetch_mnist(Path(args.root) if args.root else None)
    return 0


def cmd_train(args) -> int:
    from gencls.api import train
    from gencls.config import TrainConfig

    cfg = TrainConfig(method=args.method, dataset=args.dataset, labels=args.labels, val_size=args.val_size,
                      subset=args.subset, epochs=args.epochs, minutes=args.minutes, batch_size=args.batch_size,
                      seed=args.seed, data_seed=args.data_seed, device=args.device, out=args.out,
                      data_root=args.data_root, method_config=dict(args.settings), threads=args.threads,
                      progress=not args.no_progress, tensorboard=not args.no_tensorboard)
    out = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"done: {out} (evaluate with `gencls evaluate {out}`)")
    return 0


def cmd_evaluate(args) -> int:
    from gencls.api import evaluate

    r = evaluate(args.run, split=args.split, data_root=args.data_root)
    print(f"{r['method']} on {r['dataset']} {args.split} ({r['n']} images, checkpoint of epoch {r['checkpoint_epoch']}): "
          f"error {r['error_percent']:.2f}%, accuracy {100 * r['accuracy']:.2f}%")
    print("per-class accuracy: " + "  ".join(f"{c}: {100 * a:.1f}%" for c, a in r["per_class_accuracy"].items()))
    name = "eval.json" if args.split == "test" else f"eval_{args.split}.json"
    print(f"wrote {Path(args.run) / name} and the confusion matrix plot")
    return 0


def cmd_generate(args) -> int:
    from gencls.api import generate
    from gencls.training.runlog import save_grid

    images = generate(args.run, n=args.n, seed=args.seed)
    save_grid(images, args.out, nrow=args.nrow)
    print(f"wrote {args.n} generated images to {args.out}")
    return 0


def cmd_predict(args) -> int:
    from gencls.api import load_run, predict

    results = predict(load_run(args.run), args.paths, top_k=args.top_k, invert=args.invert)
    if not results:
        raise GenclsError("no image files found in " + ", ".join(args.paths))
    out = sys.stdout
    if args.format == "json":
        json.dump([{"path": r.path, "class": r.label, "probability": r.probability,
                    "top_k": [{"class": c, "probability": p} for c, p in r.top_k], "error": r.error}
                   for r in results], out, indent=2)
        out.write("\n")
    elif args.format == "csv":
        w = csv.writer(out)
        w.writerow(["path", "class", "probability", "top_k", "error"])
        for r in results:
            w.writerow([r.path, r.label or "", "" if r.probability is None else f"{r.probability:.6f}",
                        " ".join(f"{c}:{p:.4f}" for c, p in r.top_k), r.error or ""])
    else:
        width = max(len(r.path) for r in results)
        for r in results:
            if r.error:
                out.write(f"{r.path:<{width}}  ERROR {r.error}\n")
            else:
                tops = "  ".join(f"{c} {100 * p:5.1f}%" for c, p in r.top_k)
                out.write(f"{r.path:<{width}}  {r.label:>4} {100 * r.probability:5.1f}%   top-{len(r.top_k)}: {tops}\n")
    failed = sum(r.error is not None for r in results)
    if failed:
        sys.stderr.write(f"gencls: {failed} of {len(results)} files could not be read\n")
        return 1
    return 0


def cmd_methods(args) -> int:
    from gencls.methods import get_method_class, list_methods

    for name in list_methods():
        cls = get_method_class(name)
        gen = "generates" if cls.can_generate else "classifies only"
        print(f"{name:<14} {gen:<16} {cls.description}")
    return 0


def cmd_compare(args) -> int:
    from gencls.compare import CompareConfig, compare

    configs: dict[str, dict] = {}
    for method, k, v in args.settings:
        configs.setdefault(method, {})[k] = v
    cfg = CompareConfig(methods=[m.strip() for m in args.methods.split(",") if m.strip()], dataset=args.dataset,
                        labels=args.labels, seeds=args.seeds, epochs=args.epochs, minutes=args.minutes, out=args.out,
                        jobs=args.jobs, threads=args.threads, device=args.device, data_root=args.data_root,
                        val_size=args.val_size, subset=args.subset, batch_size=args.batch_size, method_configs=configs)
    compare(cfg)
    print((Path(args.out) / "compare.md").read_text())
    return 0


def cmd_report(args) -> int:
    from gencls.report import report

    path = report(args.path, out=args.out, data_root=args.data_root)
    print(f"wrote {path}")
    return 0


COMMANDS = {"data": cmd_data, "train": cmd_train, "evaluate": cmd_evaluate, "generate": cmd_generate,
            "predict": cmd_predict, "methods": cmd_methods, "compare": cmd_compare, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except GenclsError as e:
        sys.stderr.write(f"gencls: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("gencls: interrupted\n")
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
