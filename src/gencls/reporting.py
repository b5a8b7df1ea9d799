"""``report.html``: one self-contained page (every image embedded) that shows a run or a comparison.

A run's page: its configuration; loss curves per loss term; validation error per epoch; the test
result (error, per-class accuracy, confusion matrix); the most confidently wrong test images with
predicted and true labels; sample grids of the first, middle and last epoch (methods that
generate); and the generation table when ``eval.json`` holds one. A compare folder's page: the
comparison table, the plot and every run's result. A ``train --seeds`` folder's page: each seed's
errors, their mean ± sample std and every seed's validation curve.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Callable

import torch

from gencls.errors import GenclsError, InputError
from gencls.utils import atomic_write_bytes, read_json


def _plt():
    """matplotlib.pyplot with the file-only backend, imported on first use (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt

# metrics.jsonl keys that are not loss terms
_NOT_LOSSES = {"epoch", "step", "val_error", "best_val_error", "epoch_seconds", "images_per_second", "train_err",
               "skipped_steps", "seed"}

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .grid { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
.grid figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; text-align: center; }
.big { font-size: 1.3em; font-weight: 600; } .muted { color: #666; font-size: 0.9em; }
"""


def _img(data: bytes, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return (f'<img alt="{html.escape(alt)}"{w} src="data:image/png;base64,'
            f'{base64.b64encode(data).decode()}">')


def _fig_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _plt().close(fig)
    return buf.getvalue()


def _table(rows: list[list], header: list[str] | None = None) -> str:
    def cell(v, tag="td"):
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        txt = f"{v:.4g}" if isinstance(v, float) else str(v)
        return f'<{tag}{" class=num" if num else ""}>{html.escape(txt)}</{tag}>'
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    return "<table>" + head + "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows) + "</table>"


def _page(title: str, body: str) -> bytes:
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n").encode()


# --- plots --------------------------------------------------------------------------------------

def _loss_terms(rows: list[dict]) -> list[str]:
    """Every loss term any epoch logged (an epoch whose steps were all skipped logs null), in order."""
    terms: list[str] = []
    for r in rows:
        terms += [k for k, v in r.items() if k not in _NOT_LOSSES and k not in terms
                  and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return terms


def _loss_curves(rows: list[dict]) -> bytes | None:
    plt = _plt()
    terms = _loss_terms(rows)
    if not terms:
        return None
    n = len(terms)
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), dpi=90, squeeze=False)
    epochs = [r["epoch"] for r in rows]
    for ax, term in zip(axes.flat, terms):
        ax.plot(epochs, [r.get(term) for r in rows], marker="o", ms=3)
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("training losses (mean per epoch)", fontsize=11)
    fig.tight_layout()
    return _fig_bytes(fig)


def _curves(lines: list[tuple[str, list[dict], str, dict]], ylabel: str) -> bytes:
    """Error curves over epochs: (label, metrics rows, key, plot style) each, in percent."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4), dpi=90)
    for label, rows, key, style in lines:
        rows = [r for r in rows if r.get(key) is not None]  # --eval-every N: only every N-th epoch validates
        if rows:
            ax.plot([r["epoch"] for r in rows], [100 * r[key] for r in rows], ms=3, label=label, **style)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _fig_bytes(fig)


def _error_curve(rows: list[dict]) -> bytes:
    return _curves([("validation error", rows, "val_error", {"marker": "o"}),
                    ("error on labelled training batches", rows, "train_err", {"marker": ".", "alpha": 0.7})],
                   "error (%)")


def _confusion(cm, classes, title) -> bytes:
    from gencls.evaluation.plots import plot_confusion

    buf = io.BytesIO()
    plot_confusion(cm, classes, buf, title=title)
    return buf.getvalue()


def _confidently_wrong(x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, classes: list[str],
                       n: int = 24) -> tuple[bytes | None, int]:
    plt = _plt()
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    wrong = (pred != y).nonzero().flatten()
    if len(wrong) == 0:
        return None, 0
    order = wrong[conf[wrong].argsort(descending=True)][:n]
    cols = 8
    nrows = (len(order) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(1.35 * cols, 1.65 * nrows), dpi=90, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order.tolist()):
        img = x[i].float()
        img = img.permute(1, 2, 0) if img.shape[0] == 3 else img[0]
        ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"pred {classes[pred[i]]} {100 * conf[i]:.0f}%\ntrue {classes[y[i]]}", fontsize=8)
    fig.tight_layout()
    return _fig_bytes(fig), len(wrong)


# --- pages --------------------------------------------------------------------------------------

def _epoch_of(f: Path) -> int:
    try:
        return int(f.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def _sample_grids(run_dir: Path) -> list[tuple[str, Path]]:
    files = sorted((run_dir / "samples").glob("epoch_*.png"), key=lambda f: (_epoch_of(f), f.name))  # 999 < 1000
    if not files:
        return []
    last = len(files) - 1
    idx = sorted({0, last // 2, last})
    return [("first" if i == 0 else "last" if i == last else "middle", files[i]) for i in idx]


def _generation_section(gen: dict) -> str:
    na = gen.get("not_applicable") or {}
    rows, per_class = [], []
    for k, v in gen.items():
        if k == "not_applicable":
            continue
        if isinstance(v, dict):
            per_class.append((k, v))
        elif v is None:
            rows.append([k, "not applicable" + (f" ({na[k]})" if k in na else "")])
        elif isinstance(v, (list, tuple)):
            rows.append([k, ", ".join(f"{e:.4g}" if isinstance(e, float) else str(e) for e in v)])
        else:
            rows.append([k, v])
    out = _table(rows, ["measure", "value"])
    for k, d in per_class:
        keys = list(d)
        out += f"<p class=muted>{html.escape(k)}</p>" + _table([[d[c] for c in keys]], [str(c) for c in keys])
    return out


def _same_checkpoint(ev: dict, meta: dict) -> bool:
    """Whether a saved test evaluation is of the checkpoint ``meta`` describes."""
    return (ev.get("split") == "test" and ev.get("checkpoint_epoch") == meta.get("epoch")
            and ev.get("checkpoint_step", meta.get("step")) == meta.get("step"))


def _val_text(val: float | None) -> str:
    return "no validation split" if val is None else f"validation error {100 * val:.2f}%"


def run_report(run_dir: str | Path, out: str | Path | None = None, data_root: str | None = None,
               log: Callable[[str], None] = print) -> Path:
    from gencls.api import evaluate, load_run
    from gencls.data.datasets import load_run_split
    from gencls.training.runlog import read_metrics

    run_dir = Path(run_dir)
    run = load_run(run_dir)  # raises InputError for anything that is not a finished run
    cfg = read_json(run_dir / "config.json")
    rows = read_metrics(run_dir)
    eval_path = run_dir / "eval.json"
    ev = read_json(eval_path) if eval_path.exists() else None
    if ev is None or not _same_checkpoint(ev, run.meta):  # none, or of another checkpoint (a resumed run)
        log(f"report: evaluating the checkpoint of epoch {run.meta.get('epoch')} on the test set "
            f"({'no eval.json yet' if ev is None else 'eval.json is of another checkpoint'}); writes eval.json")
        ev = evaluate(run, "test", data_root=data_root, log=log)
    test = load_run_split(run.config, "test", data_root, log=log)
    x = test.images.float().div(255)
    logits = run.logits(x)
    classes = run.classes

    parts = [f"<h1>gencls run: {html.escape(run.config.method)} on {html.escape(run.config.dataset)}, "
             f"{html.escape(str(run.config.labels))} labels</h1>",
             f"<p class=muted>{html.escape(str(run_dir.resolve()))} — checkpoint of epoch {run.meta.get('epoch')} "
             f"(best validation error), {len(rows)} epoch(s) trained, "
             f"{run.method.trained_parameter_count():,} trained parameters</p>",
             f"<p class=big>test error {ev['error_percent']:.2f}% on {ev['n']} images "
             f"({_val_text(run.meta.get('val_error'))})</p>"]

    parts.append("<h2>Configuration</h2>")
    def setting(k, v):
        if k == "labelled" and isinstance(v, list) and len(v) > 12:  # --labelled rows: the count and the first
            return f"{len(v)} rows: {', '.join(map(str, v[:10]))}, ... (config.json has them all)"
        return json.dumps(v) if isinstance(v, (dict, list)) else v
    conf_rows = [[k, setting(k, v)] for k, v in cfg.items()]
    conf_rows.append(["method settings (resolved)", json.dumps(run.method.config)])
    if "split_sizes" in run.meta:
        conf_rows.append(["split sizes", json.dumps(run.meta["split_sizes"])])
    parts.append(_table(conf_rows, ["setting", "value"]))

    parts.append("<h2>Training</h2>")
    if rows:
        lc = _loss_curves(rows)
        if lc:
            parts.append(_img(lc, "loss curves per loss term"))
        parts.append(_img(_error_curve(rows), "validation error per epoch"))
        parts.append(_table([[r["epoch"], "–" if r.get("val_error") is None else 100 * r["val_error"],
                              r.get("epoch_seconds", float("nan"))] for r in rows],
                            ["epoch", "validation error %", "seconds"]))
    else:
        parts.append("<p>No metrics recorded.</p>")

    parts.append("<h2>Test result</h2>")
    parts.append(f"<p>error {ev['error_percent']:.2f}%, accuracy {100 * ev['accuracy']:.2f}%, "
                 f"NLL {ev['nll']:.4f} ({ev['n']} test images, evaluated once)</p>")
    parts.append('<div class=grid><div>'
                 + _table([[c, "no images" if a is None else 100 * a] for c, a in ev["per_class_accuracy"].items()],
                          ["class", "accuracy %"])
                 + "</div><div>" + _img(_confusion(ev["confusion_matrix"], classes,
                                                   f"{run.config.method}, test error {ev['error_percent']:.2f}%"),
                                        "confusion matrix") + "</div></div>")
    wrong_png, n_wrong = _confidently_wrong(x, test.labels, logits, classes)
    parts.append(f"<h2>Most confidently wrong test images</h2><p class=muted>{n_wrong} test images are "
                 "misclassified; these are the ones the model was surest about (predicted class and its "
                 "probability, true class).</p>")
    parts.append(_img(wrong_png, "most confidently wrong test images") if wrong_png else "<p>None.</p>")

    if run.method.can_generate:
        grids = _sample_grids(run_dir)
        parts.append("<h2>Samples across training</h2>")
        if grids:
            parts.append("<div class=grid>" + "".join(
                f"<figure>{_img(f.read_bytes(), f'samples, {label} epoch', 300)}"
                f"<figcaption>{label}: {f.stem.replace('_', ' ')}</figcaption></figure>" for label, f in grids)
                + "</div>")
        else:
            parts.append("<p>No sample grids were written (sample_every 0).</p>")
    if ev.get("generation"):
        parts.append("<h2>Generation</h2>" + _generation_section(ev["generation"]))

    path = Path(out) if out else run_dir / "report.html"
    atomic_write_bytes(path, _page(f"gencls report: {run_dir.name}", "\n".join(parts)))
    return path


def compare_report(folder: str | Path, out: str | Path | None = None) -> Path:
    from gencls.comparison import TABLE_HEADER, _labels_used, compare_markdown, load_compare, plot_compare, table_cells

    folder = Path(folder)
    summary = load_compare(folder)
    s = summary["settings"]
    md = compare_markdown(summary).splitlines()
    intro = md[2] if len(md) > 2 else ""
    rows = [table_cells(r) for r in summary["methods"]]
    png = folder / "compare.png"
    if not png.exists():
        plot_compare(summary, png)

    def run_row(r: dict) -> list:
        if r.get("failed"):
            return [r["method"], r["seed"], "failed", "–", "–", "–", "–", r["run"]]
        return [r["method"], r["seed"], r["test_error_percent"],
                "–" if r.get("val_error_percent") is None else r["val_error_percent"], r["epochs"],
                r["best_epoch"], round(r["train_seconds"]), r["run"]]
    labels = _labels_used(s, summary.get("runs", []))  # None: the dataset's default, as the runs resolved it
    parts = [f"<h1>gencls comparison: {html.escape(str(s['dataset']))}, {html.escape(labels)} labels</h1>",
             f"<p>{html.escape(intro)}</p>",
             _table(rows, TABLE_HEADER),
             "<p class=muted>" + html.escape(md[-1] if len(md) > 3 else "") + "</p>",
             _img(png.read_bytes(), "test error per method"),
             "<h2>Runs</h2>",
             _table([run_row(r) for r in summary["runs"]],
                    ["method", "seed", "test error %", "validation error %", "epochs", "best epoch", "seconds",
                     "run folder (gencls report it for details)"])]
    path = Path(out) if out else folder / "report.html"
    atomic_write_bytes(path, _page(f"gencls comparison: {folder.name}", "\n".join(parts)))
    return path


def seeds_report(folder: str | Path, out: str | Path | None = None, data_root: str | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """A ``train --seeds`` folder's page: each seed's test and validation error, their mean ± sample
    std, and the validation curves of all seeds (each seed's own page: ``report OUT/seed-S``)."""
    from gencls.api import describe_ensemble, evaluate_seeds
    from gencls.training.checkpoint import read_checkpoint_meta
    from gencls.training.runlog import read_metrics

    folder = Path(folder)
    ev = read_json(folder / "eval.json") if (folder / "eval.json").exists() else None

    def current(ev) -> bool:  # every seed's result is of its best checkpoint now
        try:
            return all(read_checkpoint_meta(folder / name / "checkpoints" / "best.safetensors")["epoch"]
                       == r["checkpoint_epoch"] for name, r in ev["seeds"].items())
        except (GenclsError, KeyError, TypeError, OSError, ValueError):
            return False
    if ev is None or not current(ev):
        log(f"report: evaluating every seed's best checkpoint on the test set "
            f"({'no eval.json yet' if ev is None else 'eval.json is of other checkpoints'}); writes eval.json")
        ev = evaluate_seeds(folder, data_root=data_root, log=log)
    e = ev["error_percent"]
    spread = "" if e["std"] is None else f" ± {e['std']:.2f}"
    rows, curves = [], {}
    for name, r in ev["seeds"].items():
        val = r.get("val_error")
        rows.append([name, r["checkpoint_epoch"], "–" if val is None else 100 * val, r["error_percent"]])
        curves[name] = read_metrics(folder / name)
    plot = _curves([(name, ms, "val_error", {"marker": "o"}) for name, ms in curves.items()], "validation error (%)")
    parts = [f"<h1>gencls seeds: {html.escape(ev['method'])} on {html.escape(ev['dataset'])}, "
             f"{html.escape(str(ev['labels']))} labels</h1>",
             f"<p class=big>test error {e['mean']:.2f}{spread}% over {e['n']} seed(s)</p>",
             f"<p>{html.escape(describe_ensemble(ev['ensemble'], ev['labels']))}</p>" if ev.get("ensemble") else "",
             f"<p class=muted>{html.escape(ev.get('std', ''))}; each seed evaluated once on the test set with its "
             "best-validation checkpoint; <code>gencls report</code> a seed folder for its own page.</p>",
             _table(rows, ["seed folder", "best epoch", "validation error %", "test error %"]),
             _img(plot, "validation error per epoch, every seed")]
    path = Path(out) if out else folder / "report.html"
    atomic_write_bytes(path, _page(f"gencls seeds: {folder.name}", "\n".join(parts)))
    return path


def report(path: str | Path, out: str | Path | None = None, data_root: str | None = None,
           log: Callable[[str], None] = print) -> Path:
    """Write ``report.html`` for a run folder, a compare folder or a ``train --seeds`` folder;
    returns its path."""
    from gencls.api import is_seeds_folder
    from gencls.comparison import is_compare_folder

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such run or compare folder")
    if is_compare_folder(path):
        return compare_report(path, out)
    if is_seeds_folder(path):
        return seeds_report(path, out, data_root, log)
    return run_report(path, out, data_root, log)
