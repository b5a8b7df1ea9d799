"""Command line: a thin layer over the Python API (``gencls.api``)."""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

from gencls.errors import GenclsError, TrainingStopped


def _names(kind: str) -> str:
    """The registered methods or datasets, for a help text being printed (not when the parser is
    built: that would import PyTorch and every method plugin for `gencls --version` too)."""
    try:
        if kind == "methods":
            from gencls.methods import list_methods as names
        else:
            from gencls.data import list_datasets as names
    except ImportError:  # no PyTorch here: only `predict --onnx` can work
        return "(needs PyTorch)"
    return ", ".join(names())


class _Formatter(argparse.HelpFormatter):
    """Fills ``{METHODS}`` and ``{DATASETS}`` in a help text when the help is shown."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action) or ""
        for kind in ("methods", "datasets"):
            if "{" + kind.upper() + "}" in text:
                text = text.replace("{" + kind.upper() + "}", _names(kind))
        return text


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (plus where to look) and exits 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, _Parser] = {}  # on the top parser: every (sub)command's parser by its prog

    def parse_args(self, args=None, namespace=None):
        """As argparse, but an unknown argument is reported by the (sub)command's own parser, so
        that the message points to its help (``gencls compare --help``, not ``gencls --help``)."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            words = [w for w in (sys.argv[1:] if args is None else args) if not w.startswith("-")]
            owner, prog = self, self.prog
            for w in words:  # the deepest command named on the line
                prog = f"{prog} {w}"
                if prog not in self.commands:
                    break
                owner = self.commands[prog]
            owner.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

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


def _seeds(value: str) -> list[int]:
    from gencls.config import parse_seeds

    try:
        return parse_seeds(value)
    except GenclsError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--seeds {value}: ")) from None


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


def _seed(value: str) -> int:
    n = _nonneg_int(value)
    if n >= 2**63:
        raise argparse.ArgumentTypeError(f"{value} must be below 2^63")
    return n


def _port(value: str) -> int:
    n = _nonneg_int(value)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535; 0 picks a free one)")
    return n


def _megabytes(value: str) -> float:
    x = _positive_float(value)
    if not math.isfinite(x) or x > 2**20:
        raise argparse.ArgumentTypeError(f"{value} must be a size in MB, at most {2**20}")
    return x


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
    p = _Parser(prog="gencls", description="Generative image classification: train, evaluate, generate, predict.")
    p.add_argument("--version", action="version", version=f"gencls {__import__('gencls').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("data", help="get datasets onto disk")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    f = dsub.add_parser("fetch", help="fetch a dataset into the data root")
    f.add_argument("dataset", choices=["mnist", "fashion-mnist", "digits", "cifar10", "svhn"])
    f.add_argument("--root", help="data root (default: $GENCLS_DATA, else ~/.cache/gencls)")

    t = sub.add_parser("train", help="train a method",
                       description="Train a method. With --resume only --out and the settings that may change "
                                   "in a running run (epochs, minutes, checkpointing, device) are read.")
    t.add_argument("--method", help=f"one of: {{METHODS}} (default improved-gan)")
    t.add_argument("--dataset", help=f"one of: {{DATASETS}}, or folder:PATH for your own images "
                   "(default mnist)")
    t.add_argument("--labels", type=_labels, help="labelled training images, balanced, or 'all' (default 100; "
                   "folder:PATH with PATH/labelled/: all)")
    t.add_argument("--labelled", metavar="FILE", help="these training images are the labelled ones: a file of row "
                   "numbers (0-based, the training set's order; text or a JSON list) or a run's split.json")
    t.add_argument("--epochs", type=_positive_int, help="default 10")
    t.add_argument("--minutes", type=_positive_float, help="stop at the first epoch end after this many minutes")
    t.add_argument("--seed", type=_nonneg_int, help="seed of the networks and the batch order (default 1)")
    t.add_argument("--data-seed", type=_nonneg_int, help="seed of the labelled/validation split (default 1; with "
                   "--seeds: each seed's own)")
    t.add_argument("--seeds", type=_seeds, metavar="S,S,...", help="train several seeds in one process, e.g. 1,2,3 "
                   "or 1-5: run folders OUT/seed-S, seed S drawing its own labelled split unless --data-seed is given; "
                   "OUT/seeds.json sums them up")
    t.add_argument("--stack-seeds", choices=["auto", "on", "off"], help="with --seeds: on = one batched model "
                   "(methods that have a batched step: improved-gan's MLP networks), off = one step of each seed in "
                   "turn (the numbers of separate runs), auto (default) = on for CUDA, off on the CPU")
    t.add_argument("--val-size", type=_nonneg_int, help="validation images carved from the labelled training images "
                   "(default: 10%% of the training images, at most 5000; folder:PATH with PATH/labelled/: 0)")
    t.add_argument("--image-size", metavar="N|HxW", help="resize the images to this size (default: the dataset's; "
                   "a folder's most common size)")
    t.add_argument("--channels", type=int, choices=[1, 3], help="1 (grayscale) or 3 (RGB) (default: the dataset's; "
                   "a folder's majority)")
    t.add_argument("--arch", choices=["auto", "mlp", "conv"], help="networks of improved-gan and supervised: auto "
                   "(default: the MNIST MLP for 1-channel images up to 28x28, the CIFAR-10 conv nets otherwise), mlp, conv")
    t.add_argument("--subset", type=_positive_int, help="use a random subset of this many training images")
    t.add_argument("--batch-size", type=_positive_int, help="default 100; per process under torchrun (a step then "
                   "trains on batch-size x processes images)")
    t.add_argument("--set", dest="settings", type=_setting, action="append", metavar="KEY=VALUE",
                   help="a method setting, e.g. --set lr=0.001 (repeatable)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--config", metavar="FILE", help="settings from a JSON or TOML file, e.g. another run's "
                   "config.json to train it again; flags given here override it")
    t.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    t.add_argument("--threads", type=_positive_int, help="CPU threads (default: torch's choice)")
    t.add_argument("--data-root", help="data root (default: $GENCLS_DATA, else ~/.cache/gencls)")
    t.add_argument("--checkpoint-every", type=_nonneg_int, help="also checkpoint every N steps (default: epoch ends)")
    t.add_argument("--keep", type=_nonneg_int, help="keep the checkpoints of the last K epochs (default 0)")
    t.add_argument("--eval-every", type=_positive_int, help="validate and checkpoint every N epochs and after the "
                   "last (default 1; a crash then loses up to N epochs)")
    t.add_argument("--sample-every", type=_nonneg_int, help="write a sample grid every N epochs (0: never; default 1)")
    t.add_argument("--on-nan", choices=["stop", "skip"], help="a NaN/inf loss or exploding gradient: stop (default) "
                   "or skip the batch")
    t.add_argument("--lr-decay", type=_nonneg_int, nargs=2, metavar=("START", "END"),
                   help="learning rate constant until epoch START, then linearly towards 0 at epoch END "
                        "(the CIFAR-10 reference: 800 1200)")
    t.add_argument("--max-grad-norm", type=_positive_float, help="gradient norm counted as exploding (default 1e6)")
    t.add_argument("--precision", choices=["fp32", "tf32", "bf16"], help="bf16: autocast matrix products to "
                   "bfloat16 (losses, normalisation, optimizer and EMA stay fp32); tf32: fp32 matrix products on "
                   "TF32 tensor cores (CUDA; the same as fp32 on the CPU); default fp32")
    t.add_argument("--compile", action="store_const", const=True, help="torch.compile the networks (slow start)")
    t.add_argument("--cuda-graphs", action="store_const", const=True,
                   help="replay the whole training step as one CUDA graph (CUDA only)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="delete an existing run in --out first")
    t.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bar")
    t.add_argument("--no-tensorboard", dest="tensorboard", action="store_const", const=False,
                   help="no TensorBoard event files")

    e = sub.add_parser("evaluate", help="evaluate a run's best checkpoint")
    e.add_argument("run")
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.add_argument("--data-root")
    e.add_argument("--ood", action="append", default=[], metavar="DATA",
                   help="also the AUROC of the out-of-distribution score, test set vs DATA: fashion-mnist, noise "
                        "or a dataset name (repeatable)")
    e.add_argument("--generation", action="store_true",
                   help="also measure generated images: FID, KID, classifier score, label consistency, CAS")
    e.add_argument("--n", type=_positive_int, help="generated images for --generation (default 10000)")
    e.add_argument("--seed", type=_seed, default=0, help="seed of the generated images for --generation")
    e.add_argument("--cas-epochs", type=_positive_int, default=5, help="epochs of the CAS classifier")
    e.add_argument("--feature-net", metavar="FILE",
                   help="feature network file for --generation (default: the data root's, made on first use)")
    e.add_argument("--device", default="cpu", help="cpu, auto or cuda[:N]")

    g = sub.add_parser("generate", help="write generated images: a grid, a grid per class, interpolations, or files")
    g.add_argument("run")
    g.add_argument("--n", type=_positive_int, default=100, help="images (ignored with --per-class/--interpolate)")
    g.add_argument("--class", dest="cls", metavar="CLASS", help="generate this class (name or index; "
                   "class-conditional methods only)")
    g.add_argument("--per-class", type=_positive_int, metavar="K",
                   help="K images of every class, one labelled row per class")
    g.add_argument("--interpolate", action="store_true",
                   help="rows that walk between two latent points (--nrow steps, --rows rows)")
    g.add_argument("--rows", type=_positive_int, default=10, help="rows of --interpolate")
    out = g.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="PNG file of the grid")
    out.add_argument("--out-dir", help="folder: one PNG per image, named with its class")
    g.add_argument("--overwrite", action="store_true",
                   help="with --out-dir: replace the generated images an earlier call left there")
    g.add_argument("--seed", type=_seed, help="makes the images repeatable")
    g.add_argument("--nrow", type=_positive_int, default=10, help="images per row")
    g.add_argument("--device", default="cpu", help="cpu, auto or cuda[:N]")

    mt = sub.add_parser("metrics", help="the feature networks of the generation metrics")
    msub = mt.add_subparsers(dest="metrics_command", metavar="ACTION", parser_class=_Parser)
    mp = msub.add_parser("prepare", help="train and cache a dataset's feature network (once)")
    mp.add_argument("--dataset", default="mnist", help=f"one of: {{DATASETS}}")
    mp.add_argument("--data-root", help="data root (default: $GENCLS_DATA, else ~/.cache/gencls)")
    mp.add_argument("--image-size", metavar="N|HxW", help="as a run's --image-size (default: the dataset's)")
    mp.add_argument("--channels", type=int, choices=(1, 3), help="as a run's --channels (default: the dataset's)")
    mp.add_argument("--force", action="store_true", help="train again even if cached")
    mp.add_argument("--device", default="cpu", help="cpu, auto or cuda[:N]")
    mp.add_argument("--threads", type=_positive_int, help="CPU threads (default: torch's choice)")

    pr = sub.add_parser("predict", help="classify image files or folders",
                        usage="gencls predict RUN PATH... | gencls predict --onnx MODEL.onnx PATH... [options]")
    pr.add_argument("items", nargs="+", metavar="RUN PATH", help="a run folder (or a `train --seeds` folder: "
                    "its seeds as one ensemble), then image files or folders (with --onnx: image files or folders only)")
    pr.add_argument("--onnx", metavar="MODEL", help="classify with an exported ONNX model and ONNX Runtime "
                    "(no PyTorch needed)")
    pr.add_argument("--format", choices=["table", "csv", "json"], default="table")
    pr.add_argument("--top-k", type=_positive_int, default=3)
    pr.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                    help="invert light-background images to match dark-background training data (auto)")

    ex = sub.add_parser("export", help="export a run to a self-contained ONNX file, checked against PyTorch")
    ex.add_argument("run")
    ex.add_argument("--format", choices=["onnx"], default="onnx")
    ex.add_argument("--out", required=True, help="the .onnx file to write")
    ex.add_argument("--part", choices=["classifier", "generator"], default="classifier")
    ex.add_argument("--check", type=_positive_int, default=1000, metavar="N",
                    help="compare with PyTorch on N test images (or latents); fail above 1e-4")
    ex.add_argument("--data-root")

    sv = sub.add_parser("serve", help="HTTP API and web page for a run (FastAPI on uvicorn)")
    sv.add_argument("run")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    sv.add_argument("--port", type=_port, default=8000)
    sv.add_argument("--max-upload-mb", type=_megabytes, default=10.0, help="largest request body")
    sv.add_argument("--max-images", type=_positive_int, default=64, help="most images per /predict request")
    sv.add_argument("--max-pixels", type=_positive_int, default=16_000_000, help="most pixels per image")
    sv.add_argument("--max-batch", type=_positive_int, default=64, help="most images per model call")
    sv.add_argument("--max-connections", type=_positive_int, default=32,
                    help="open connections at once; more get 503 (bounds the memory uploads take)")
    sv.add_argument("--threads", type=_positive_int, help="CPU threads for inference")
    sv.add_argument("--device", default="cpu")
    sv.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                    help="uvicorn's log level (info logs every request)")

    c = sub.add_parser("compare", help="train and evaluate several methods over several seeds, side by side")
    c.add_argument("--methods", help=f"comma-separated, any of: {{METHODS}} (default: all five, "
                                     "improved-gan,acgan,vae-m2,aae,supervised)")
    c.add_argument("--dataset", default="mnist", help=f"one of: {{DATASETS}}, or folder:PATH (default mnist)")
    c.add_argument("--labels", type=_labels, help="labelled images per run, drawn by each seed (default: as train, "
                   "100; folder:PATH with PATH/labelled/: all)")
    c.add_argument("--labelled", metavar="FILE", help="these training rows are every run's labelled images (as "
                   "train --labelled)")
    c.add_argument("--seeds", type=_positive_int, default=3,
                   help="seeds 1..N; seed s also draws the labelled split (the same for every method) (default 3)")
    c.add_argument("--epochs", type=_positive_int, default=10, help="per run (default 10)")
    c.add_argument("--minutes", type=_positive_float, help="per run: stop at the first epoch end after this many minutes")
    c.add_argument("--out", required=True, help="compare folder (rerun to resume: finished runs are kept)")
    c.add_argument("--jobs", type=_positive_int, default=1, help="runs trained in parallel processes (default 1)")
    c.add_argument("--threads", type=_positive_int, help="CPU threads per run")
    c.add_argument("--val-size", type=_nonneg_int, help="validation images per run (default: as train, 10%% of "
                   "the training images, at most 5000)")
    c.add_argument("--subset", type=_positive_int)
    c.add_argument("--batch-size", type=_positive_int, default=100, help="(default 100)")
    c.add_argument("--set", dest="settings", type=_method_setting, action="append", default=[],
                   metavar="METHOD:KEY=VALUE", help="a method setting, e.g. --set vae-m2:alpha=10 (repeatable)")
    c.add_argument("--on-nan", choices=["stop", "skip"], default="stop", help="a run's NaN/inf loss or exploding "
                   "gradient: stop it (shown as failed; the default) or skip the batch")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    c.add_argument("--data-root")

    r = sub.add_parser("report", help="write a self-contained report.html for a run or a compare folder")
    r.add_argument("path", metavar="RUN_OR_COMPARE")
    r.add_argument("--out", help="HTML file (default: report.html in the folder)")
    r.add_argument("--data-root")

    sub.add_parser("methods", help="list the registered methods")
    def register(parser):  # every (sub)command's parser, for parse_args' messages
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sp in action.choices.values():
                    p.commands[sp.prog] = sp
                    register(sp)

    register(p)
    return p


def cmd_data(args) -> int:
    from gencls.data import fetch_fashion_mnist, fetch_mnist

    if args.data_command != "fetch":
        raise GenclsError("usage: gencls data fetch mnist|fashion-mnist|digits|cifar10|svhn [--root DIR]")
    root = Path(args.root) if args.root else None
    if args.dataset in ("mnist", "fashion-mnist"):
        (fetch_mnist if args.dataset == "mnist" else fetch_fashion_mnist)(root)
    else:  # digits ships with scikit-learn; cifar10/svhn: torchvision's download or files put in place
        from gencls.data import load_split

        for split in ("train", "test"):
            d = load_split(args.dataset, split, root)
            print(f"{args.dataset} {split}: {len(d)} images of {'x'.join(map(str, d.image_shape))}")
    return 0


TRAIN_FLAGS = ("method", "dataset", "labels", "val_size", "subset", "epochs", "minutes", "batch_size", "seed",
               "data_seed", "seeds", "stack_seeds", "device", "out", "data_root", "threads", "progress", "tensorboard",
               "checkpoint_every", "keep", "eval_every", "sample_every", "on_nan", "max_grad_norm", "image_size",
               "channels", "arch", "precision", "compile", "cuda_graphs", "lr_decay")


def cmd_train(args) -> int:
    from gencls.api import train
    from gencls.config import TrainConfig

    given = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    if "seed" in given and "seeds" in given:
        raise GenclsError(f"--seed {given['seed']} and --seeds: give one (--seeds trains seed s with data seed s "
                          "unless --data-seed is given)")
    if args.settings:
        given["method_config"] = dict(args.settings)
    if args.labelled:
        from gencls.data.split import read_labelled_file

        given["labelled"] = read_labelled_file(args.labelled)
    if args.config:
        if args.resume:
            raise GenclsError("--config starts a new run; --resume continues one with its own config.json")
        from gencls.config import config_with_file

        given = config_with_file(args.config, given)
    out = train(given if args.resume else TrainConfig(**given), resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all processes
        if (out / "seeds.json").exists():
            print(f"done: {out} (one run folder per seed; `gencls evaluate {out}`: every seed, mean ± std and their "
                  f"ensemble; `gencls evaluate {out}/seed-S`: one)")
        else:
            print(f"done: {out} (evaluate with `gencls evaluate {out}`)")
    return 0


def cmd_evaluate(args) -> int:
    from gencls.api import eval_file_name, evaluate, is_seeds_folder, load_run

    if not args.generation and args.n is not None:
        raise GenclsError("--n applies to --generation only")
    if is_seeds_folder(args.run):
        return _evaluate_seeds(args)
    run = load_run(args.run, device=args.device)
    name = eval_file_name(run, args.split)
    before = _inode(run.path / name) if run.path is not None else None
    r = evaluate(run, split=args.split, data_root=args.data_root, ood=tuple(dict.fromkeys(args.ood)),
                 generation=args.generation, n=args.n or 10000, seed=args.seed, cas_epochs=args.cas_epochs,
                 feature_net=args.feature_net)
    print(f"{r['method']} on {r['dataset']} {args.split} ({r['n']} images, checkpoint of epoch {r['checkpoint_epoch']}): "
          f"error {r['error_percent']:.2f}%, accuracy {100 * r['accuracy']:.2f}%")
    print("per-class accuracy: " + "  ".join(f"{c}: " + ("no images" if a is None else f"{100 * a:.1f}%")
                                             for c, a in r["per_class_accuracy"].items()))
    for name in dict.fromkeys(args.ood):
        o = r["ood"][name]
        flagged = ("no threshold (not calibrated)" if o["threshold"] is None else
                   f"flagged {100 * o['flagged_in']:.1f}% of {args.split} and {100 * o['flagged_out']:.1f}% of {name} "
                   f"(threshold {o['threshold']:.4g})")
        print(f"out-of-distribution, {args.split} vs {name} ({o['score']}): AUROC {o['auroc']:.4f}, "
              f"FPR at 95% TPR {100 * o['fpr_at_95_tpr']:.1f}%, {flagged}")
    g = r.get("generation")
    if g:
        def pct(v):
            return "not applicable" if v is None else f"{100 * v:.2f}%"

        print(f"generation ({g['n']} images, seed {g['seed']}, against {g.get('n_real', '?')} real test images; "
              f"KID over {g.get('kid_subsets', '?')} subsets of {g.get('kid_subset_size', '?')}; feature network test accuracy "
              f"{100 * g['feature_net']['test_accuracy']:.2f}%): FID {g['fid']:.3f}, KID {g['kid']:.5f} "
              f"(+-{g['kid_std']:.5f}), classifier score {g['classifier_score']:.3f} "
              f"(real test images: {g['classifier_score_real_test']:.3f}), "
              f"label consistency {pct(g['label_consistency'])}, CAS {pct(g['cas'])}")
        if g["label_consistency_per_class"]:
            print("label consistency per class: " + "  ".join(
                f"{c}: {100 * a:.1f}%" for c, a in g["label_consistency_per_class"].items()))
    after = _inode(run.path / name) if run.path is not None else None
    if after is not None and after != before:  # written anew (not a read-only folder: evaluate said so)
        print(f"wrote {run.path / name} and the confusion matrix plot")
    return 0


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _evaluate_seeds(args) -> int:
    """`gencls evaluate OUT` of a `train --seeds` folder: every seed, then mean ± std."""
    from gencls.api import describe_ensemble, evaluate_seeds

    s = evaluate_seeds(args.run, split=args.split, data_root=args.data_root, device=args.device,
                       ood=tuple(dict.fromkeys(args.ood)), generation=args.generation, n=args.n or 10000,
                       seed=args.seed, cas_epochs=args.cas_epochs, feature_net=args.feature_net)
    for name, r in s["seeds"].items():
        print(f"{name}: {args.split} error {r['error_percent']:.2f}% (checkpoint of epoch {r['checkpoint_epoch']})")
    e = s["error_percent"]
    spread = f" ± {e['std']:.2f}" if e["std"] is not None else ""
    print(f"{s['method']} on {s['dataset']} {args.split}, {e['n']} seed(s): error {e['mean']:.2f}{spread}% "
          f"(mean{' ± sample std' if spread else ''}); each seed's figures in its eval file")
    if s.get("ensemble"):
        print(describe_ensemble(s["ensemble"], s["labels"]))
    return 0


def cmd_generate(args) -> int:
    from gencls.api import generate, generate_per_class, interpolate, load_run, write_images
    from gencls.training.runlog import save_labelled_grid

    if args.out and Path(args.out).suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
        raise GenclsError(f"--out {args.out}: give an image file name (.png, .jpg, ...)")
    if args.out_dir:
        from gencls.api import check_out_dir

        check_out_dir(args.out_dir, args.overwrite)  # before any work
    run = load_run(args.run, device=args.device)
    if sum([args.cls is not None, args.per_class is not None, args.interpolate]) > 1:
        raise GenclsError("give one of --class, --per-class and --interpolate")
    row_labels, labels, nrow = None, None, args.nrow
    if args.per_class is not None:
        images, row_labels = generate_per_class(run, args.per_class, seed=args.seed)
        nrow = args.per_class
        labels = [c for c in range(len(run.classes)) for _ in range(args.per_class)]
    elif args.interpolate:
        images, row_labels = interpolate(run, rows=args.rows, steps=args.nrow, seed=args.seed)
        if row_labels is not None:
            labels = [run.classes.index(c) for c in row_labels for _ in range(args.nrow)]
    else:
        images = generate(run, n=args.n, seed=args.seed, labels=args.cls)
        if args.cls is not None:
            from gencls.api import class_index

            labels = [class_index(run, args.cls)] * args.n
        elif run.method.can_condition:  # every class in turn
            labels = [i % len(run.classes) for i in range(args.n)]
    if args.out_dir:
        paths = write_images(run, images, args.out_dir, labels, overwrite=args.overwrite)
        print(f"wrote {len(paths)} generated images to {os.path.join(args.out_dir, '')}")
    else:
        save_labelled_grid(images, args.out, nrow=nrow, row_labels=row_labels)
        print(f"wrote {len(images)} generated images to {args.out}")
    return 0


def cmd_metrics(args) -> int:
    import torch

    from gencls.api import prepare_metrics

    if args.metrics_command != "prepare":
        raise GenclsError("usage: gencls metrics prepare --dataset mnist [--image-size N] [--channels C] "
                          "[--data-root DIR] [--force]")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = prepare_metrics(args.dataset, args.data_root, force=args.force, device=args.device,
                           image_size=args.image_size, channels=args.channels)
    if not Path(info["path"]).is_file():  # trained, but the data root is not writable: nothing prepared
        raise GenclsError(f"{info['path']}: the feature network could not be written; give a writable --data-root")
    how = "cached, was trained" if info.get("cached") else "trained"
    print(f"feature network for {info['dataset']}: test accuracy {100 * info['test_accuracy']:.2f}%, "
          f"{how} in {info['train_seconds']:.0f}s on {info['device']} ({info['threads']} threads), "
          f"sha256 {info['sha256'][:16]}..., at {info['path']}")
    return 0


def cmd_predict(args) -> int:
    if args.onnx:  # ONNX Runtime only: this path imports no PyTorch
        from gencls.onnx_runtime import OnnxClassifier

        paths = args.items
        results = OnnxClassifier(args.onnx).predict(paths, top_k=args.top_k, invert=args.invert)
    else:
        from gencls.api import is_seeds_folder, load_ensemble, load_run, predict

        if len(args.items) < 2:
            raise GenclsError("usage: gencls predict RUN PATH... (or gencls predict --onnx MODEL.onnx PATH...)")
        paths = args.items[1:]
        if is_seeds_folder(args.items[0]):  # a `train --seeds` folder: its seeds as one ensemble
            run = load_ensemble(args.items[0])
            sys.stderr.write(f"predict: an ensemble of {len(run.runs)} seeds ({', '.join(run.meta['seeds'])}): "
                             "the mean of their class probabilities and of their OOD scores\n")
        else:
            run = load_run(args.items[0])
        results = predict(run, paths, top_k=args.top_k, invert=args.invert)
    if not results:
        raise GenclsError("no image files found in " + ", ".join(paths))
    out = sys.stdout
    if args.format == "json":
        json.dump([r.to_dict() for r in results], out, indent=2)
        out.write("\n")
    elif args.format == "csv":
        w = csv.writer(out)
        w.writerow(["path", "class", "probability", "top_k", "ood_score", "ood_flag", "error"])
        for r in results:
            w.writerow([r.path, r.label or "", "" if r.probability is None else f"{r.probability:.6f}",
                        " ".join(f"{c}:{p:.4f}" for c, p in r.top_k),
                        "" if r.ood_score is None else f"{r.ood_score:.6g}",
                        "" if r.ood_flag is None else int(r.ood_flag), r.error or ""])
    else:
        width = max(len(r.path) for r in results)
        for r in results:
            if r.error:
                out.write(f"{r.path:<{width}}  ERROR {r.error}\n")
            else:
                tops = "  ".join(f"{c} {100 * p:5.1f}%" for c, p in r.top_k)
                verdict = ("no threshold: not calibrated" if r.ood_flag is None
                           else "UNLIKE THE TRAINING DATA" if r.ood_flag else "in distribution")
                out.write(f"{r.path:<{width}}  {r.label:>4} {100 * r.probability:5.1f}%   top-{len(r.top_k)}: {tops}"
                          f"   ood score {r.ood_score:.4g} ({verdict})\n")
    failed = sum(r.error is not None for r in results)
    if failed:
        sys.stderr.write(f"gencls: {failed} of {len(results)} files could not be read\n")
        return 1
    return 0


def cmd_export(args) -> int:
    from gencls.export import export_onnx

    r = export_onnx(args.run, args.out, part=args.part, n_check=args.check, data_root=args.data_root)
    by = ", ".join(f"{k} {v:.2e}" for k, v in r["max_abs_diff_by_output"].items())
    print(f"wrote {r['path']} ({r['part']}, {r['bytes'] / 1e6:.1f} MB, opset {r['opset']}, dynamic batch)")
    print(f"checked against PyTorch on {r['n_checked']} inputs: max abs diff {r['max_abs_diff']:.3e} "
          f"(tolerance {r['tolerance']:g}; {by})")
    return 0


def cmd_serve(args) -> int:
    from gencls.server import ServerLimits, serve

    limits = ServerLimits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_images=args.max_images,
                          max_pixels=args.max_pixels, max_batch=args.max_batch, max_connections=args.max_connections)
    serve(args.run, host=args.host, port=args.port, limits=limits, threads=args.threads, device=args.device,
          log_level=args.log_level)
    return 0


def cmd_methods(args) -> int:
    from gencls.methods import get_method_class, list_methods, method_source

    for name in list_methods():  # a plugin that failed to load has had its warning line on stderr
        cls = get_method_class(name)
        gen = "generates classes" if cls.can_condition else "generates" if cls.can_generate else "classifies only"
        source = method_source(name)
        print(f"{name:<14} {gen:<18} {cls.description}" + (f" [{source}]" if source else ""))
    return 0


def cmd_compare(args) -> int:
    from gencls.comparison import DEFAULT_METHODS, CompareConfig, compare

    methods = args.methods.split(",") if args.methods else DEFAULT_METHODS
    configs: dict[str, dict] = {}
    for method, k, v in args.settings:
        configs.setdefault(method, {})[k] = v
    labelled = None
    if args.labelled:
        from gencls.data.split import read_labelled_file

        labelled = read_labelled_file(args.labelled)
    cfg = CompareConfig(methods=[m.strip() for m in methods if m.strip()], dataset=args.dataset,
                        labels=args.labels, labelled=labelled, seeds=args.seeds, epochs=args.epochs, minutes=args.minutes, out=args.out,
                        jobs=args.jobs, threads=args.threads, device=args.device, data_root=args.data_root,
                        val_size=args.val_size, subset=args.subset, batch_size=args.batch_size, method_configs=configs,
                        on_nan=args.on_nan)
    summary = compare(cfg)
    print((Path(args.out) / "compare.md").read_text())
    if summary["failed"]:  # the table is written; the exit status says it is incomplete
        print(f"gencls: {len(summary['failed'])} run(s) failed ({', '.join(summary['failed'])}); "
              f"see {Path(args.out) / 'logs'}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args) -> int:
    from gencls.reporting import report

    path = report(args.path, out=args.out, data_root=args.data_root)
    print(f"wrote {path}")
    return 0


COMMANDS = {"data": cmd_data, "train": cmd_train, "evaluate": cmd_evaluate, "generate": cmd_generate,
            "predict": cmd_predict, "export": cmd_export, "serve": cmd_serve, "methods": cmd_methods,
            "compare": cmd_compare, "report": cmd_report, "metrics": cmd_metrics}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except TrainingStopped as e:
        sys.stderr.write(f"gencls: {e}\n")
        return e.exit_code
    except GenclsError as e:
        sys.stderr.write(f"gencls: error: {e}\n")
        return 2
    except BrokenPipeError:
        return 1
    except OSError as e:  # a file we could not read or write: say which, no traceback
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        sys.stderr.write(f"gencls: error: {e.strerror or e}{where}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("gencls: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
