"""Compare methods on the same data, splits and budget: every method x seed is trained, evaluated
on the test set once, and summarised in ``compare.json``, ``compare.md`` and ``compare.png``.

Seed s sets both the networks' seed and the data seed, so seed s is one draw of the labelled
images, the same draw for every method. Each run lives in ``OUT/runs/METHOD-seedS``; a run is
finished when its ``result.json`` exists. Calling ``compare`` again on the same folder trains only
what is missing: finished runs are reused as they are, a run stopped mid-way resumes from its last
checkpoint (its ``--minutes`` budget then counts again from the resume). Each run's training log
is ``OUT/logs/METHOD-seedS.log``.
"""
from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from gencls.errors import GenclsError
from gencls.utils import atomic_write_bytes, atomic_write_json, read_json

# every method of the project, in the order of the README's table (the default of ``compare``)
DEFAULT_METHODS = ("improved-gan", "acgan", "vae-m2", "aae", "supervised")

# settings that must match for runs of an existing compare folder to be reused
_FIXED = ("dataset", "labels", "epochs", "minutes", "val_size", "subset", "batch_size", "method_configs")


@dataclass
class CompareConfig:
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    dataset: str = "mnist"
    labels: int | str = 100
    seeds: int = 3  # seeds 1..seeds
    epochs: int = 10
    minutes: float | None = None
    out: str = "runs/compare"
    jobs: int = 1
    threads: int | None = None
    device: str = "auto"
    data_root: str | None = None
    val_size: int = 5000
    subset: int | None = None
    batch_size: int = 100
    method_configs: dict[str, dict] = field(default_factory=dict)  # per method: its --set values

    def validate(self) -> "CompareConfig":
        from gencls.config import TrainConfig
        from gencls.methods import get_method_class

        if not self.methods:
            raise GenclsError("--methods: name at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise GenclsError(f"--methods {','.join(self.methods)}: a method is named twice")
        for m in self.methods:
            get_method_class(m)  # unknown names -> GenclsError listing the known ones
        for m in self.method_configs:
            if m not in self.methods:
                raise GenclsError(f"settings given for {m}, which is not among --methods")
        if self.seeds < 1:
            raise GenclsError(f"--seeds {self.seeds}: must be at least 1")
        if self.jobs < 1:
            raise GenclsError(f"--jobs {self.jobs}: must be at least 1")
        self.labels = TrainConfig(labels=self.labels).validate().labels
        self.train_config("x", 1, "x").validate()
        return self

    def run_name(self, method: str, seed: int) -> str:
        return f"{method}-seed{seed}"

    def run_threads(self) -> int | None:
        """CPU threads per run: as given, else the cores shared out between parallel jobs."""
        if self.threads or self.jobs == 1:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.jobs)

    def train_config(self, method: str, seed: int, out: str):
        from gencls.config import TrainConfig

        return TrainConfig(method=method, dataset=self.dataset, labels=self.labels, val_size=self.val_size,
                           subset=self.subset, epochs=self.epochs, minutes=self.minutes, batch_size=self.batch_size,
                           seed=seed, data_seed=seed, device=self.device, out=out, data_root=self.data_root,
                           method_config=dict(self.method_configs.get(method, {})), threads=self.run_threads(),
                           progress=False, tensorboard=False)


def _run_one(train_cfg: dict, run_dir: str) -> dict:
    """Train (or resume) one run, evaluate it on the test set, write its result.json. Picklable for workers."""
    from gencls.api import evaluate, load_run
    from gencls.config import TrainConfig
    from gencls.training.runlog import read_metrics
    from gencls.training.trainer import train

    out = Path(run_dir)
    log_path = out.parent.parent / "logs" / f"{out.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logf = open(log_path, "a")

    def log(s: str) -> None:
        logf.write(s + "\n")
        logf.flush()

    try:
        cfg = TrainConfig.from_dict(train_cfg)
        resume = (out / "checkpoints" / "last.safetensors").exists()
        train(cfg, resume=resume, overwrite=not resume, log=log)
        run = load_run(out, device=cfg.device)  # evaluated where it trained (the GPU, when it had one)
        report = evaluate(run, "test", log=log)
        rows = read_metrics(out)
        val = run.meta.get("val_error")
        result = {"method": cfg.method, "seed": cfg.seed, "data_seed": cfg.data_seed,
                  "device": _device_name(cfg.device),
                  "test_error_percent": report["error_percent"], "val_error_percent": None if val is None else 100 * val,
                  "best_epoch": run.meta["epoch"], "epochs": len(rows),
                  "train_seconds": sum(r["epoch_seconds"] for r in rows),
                  "parameters": run.method.trained_parameter_count(), "run": out.name}
        atomic_write_json(out / "result.json", result)
        return result
    finally:
        logf.close()


def _device_name(name: str) -> str:
    """The device a run trains on, in words: "cpu" or e.g. "cuda (NVIDIA H100 80GB HBM3)"."""
    import torch

    from gencls.utils import resolve_device

    device = resolve_device(name)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _summarise(cfg: CompareConfig, results: list[dict]) -> list[dict]:
    from gencls.methods import get_method_class

    key = f"{cfg.dataset}/{cfg.labels}"
    rows = []
    for m in cfg.methods:
        rs = sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"])
        if not rs:
            continue
        errs = [r["test_error_percent"] for r in rs]
        best, worst = min(rs, key=lambda r: r["test_error_percent"]), max(rs, key=lambda r: r["test_error_percent"])
        pub = get_method_class(m).published_results.get(key)
        rows.append({"method": m, "seeds": [r["seed"] for r in rs], "test_errors_percent": errs,
                     "mean": statistics.fmean(errs), "std": statistics.stdev(errs) if len(errs) > 1 else 0.0,
                     "best": {"seed": best["seed"], "error": best["test_error_percent"]},
                     "worst": {"seed": worst["seed"], "error": worst["test_error_percent"]},
                     "epochs": statistics.fmean(r["epochs"] for r in rs),
                     "train_seconds": statistics.fmean(r["train_seconds"] for r in rs),
                     "parameters": rs[0]["parameters"], "published": pub})
    return rows


def _fmt_epochs(e: float) -> str:
    return f"{e:.0f}" if abs(e - round(e)) < 1e-9 else f"{e:.1f}"


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def compare_markdown(summary: dict) -> str:
    s = summary["settings"]
    budget = f"{s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}"
    if s.get("minutes"):
        budget += f" or {s['minutes']} min of training (checked at epoch ends), whichever ends first"
    devices = sorted({r.get("device") or "unrecorded" for r in summary.get("runs", [])})
    lines = [f"# Comparison: {s['dataset']}, {s['labels']} labels, seeds 1..{s['seeds']}", "",
             f"Budget per run: {budget}, batch {s['batch_size']}, "
             f"validation {s['val_size']} images" + (f", subset {s['subset']}" if s.get("subset") else "")
             + f"; device {', '.join(devices) or s.get('device', 'auto')}, "
             f"threads per run {s.get('threads') or 'default'}, {s.get('jobs', 1)} run(s) in parallel. "
             "Each run is evaluated once on the test set with its best-validation checkpoint; seed s draws "
             "the labelled images (the same draw for every method).", "",
             "| method | test error % (mean ± std) | best seed | worst seed | epochs | training time | parameters "
             "| published test error % | source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["methods"]:
        pub = r["published"]
        lines.append(f"| {r['method']} | {r['mean']:.2f} ± {r['std']:.2f} (n={len(r['seeds'])}) "
                     f"| {r['best']['error']:.2f} (seed {r['best']['seed']}) "
                     f"| {r['worst']['error']:.2f} (seed {r['worst']['seed']}) | {_fmt_epochs(r['epochs'])} "
                     f"| {_fmt_time(r['train_seconds'])} | {r['parameters']:,} "
                     f"| {pub['error'] if pub else 'none'} | {pub['source'] if pub else '–'} |")
    lines += ["", "Training time: mean per run, training epochs only (no evaluation). Parameters: those the "
              "optimizers train (no EMA copies). Published figures come from the papers' own, much longer "
              "training.", ""]
    return "\n".join(lines)


def plot_compare(summary: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["methods"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * max(1, len(rows)), 4.0), dpi=100)
    xs = range(len(rows))
    ax.bar(xs, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], capsize=6, color="#9ecae1",
           edgecolor="#3182bd", label="mean ± std over seeds")
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["test_errors_percent"]), r["test_errors_percent"], color="black", s=12, zorder=3,
                   label="one seed" if i == 0 else None)
        if r["published"]:
            try:
                pub = float(r["published"]["error"].split()[0])
            except ValueError:
                continue
            ax.scatter([i + 0.3], [pub], marker="*", color="#e6550d", s=90, zorder=3,
                       label="published" if not any(rr["published"] for rr in rows[:i]) else None)
    ax.set_xticks(list(xs), [r["method"] for r in rows], rotation=20)
    ax.set_ylabel("test error (%)")
    s = summary["settings"]
    ax.set_title(f"{s['dataset']}, {s['labels']} labels, {s['seeds']} seed(s)", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def compare(config: CompareConfig | dict | None = None, log: Callable[[str], None] = print, **kwargs) -> dict:
    """Train and evaluate every method x seed (skipping finished runs), then write the summary.

    ``compare(methods=["improved-gan", "supervised"], seeds=3, epochs=5, out="runs/cmp")``;
    returns the summary written to ``compare.json``.
    """
    if config is None:
        config = CompareConfig(**kwargs)
    elif isinstance(config, dict):
        config = CompareConfig(**config)
    elif kwargs:
        raise TypeError("pass either a config or keyword settings, not both")
    cfg = config.validate()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise GenclsError(f"--out {out}: exists and is not a folder")
    settings_path = out / "compare_settings.json"
    settings = asdict(cfg)
    if settings_path.exists():
        old = read_json(settings_path)
        changed = [k for k in _FIXED if old.get(k) != settings.get(k)]
        if changed:
            raise GenclsError(f"--out {out}: holds a comparison with other settings ({', '.join(changed)}: "
                              + "; ".join(f"{k} was {old.get(k)!r}" for k in changed)
                              + "); use another --out or the same settings")
    atomic_write_json(settings_path, settings)

    todo, results = [], []
    for m in cfg.methods:
        for s in range(1, cfg.seeds + 1):
            run_dir = out / "runs" / cfg.run_name(m, s)
            if (run_dir / "result.json").exists():
                results.append(read_json(run_dir / "result.json"))
            else:
                todo.append((cfg.train_config(m, s, str(run_dir)).to_dict(), str(run_dir)))
    total = cfg.seeds * len(cfg.methods)
    log(f"compare: {total} runs, {total - len(todo)} already finished, {len(todo)} to train "
        f"({cfg.jobs} job(s)); run folders in {out / 'runs'}")

    def done(r: dict) -> None:
        results.append(r)
        log(f"  [{len(results)}/{total}] {r['method']} seed {r['seed']}: test error {r['test_error_percent']:.2f}% "
            f"(val {r['val_error_percent'] or float('nan'):.2f}%, {r['epochs']} epochs, {_fmt_time(r['train_seconds'])})")

    t0 = time.time()
    if cfg.jobs == 1 or len(todo) <= 1:
        for tc, rd in todo:
            done(_run_one(tc, rd))
    else:
        with ProcessPoolExecutor(max_workers=min(cfg.jobs, len(todo)), mp_context=get_context("spawn")) as ex:
            futures = {ex.submit(_run_one, tc, rd): rd for tc, rd in todo}
            for f in as_completed(futures):
                try:
                    done(f.result())
                except GenclsError:
                    raise
                except Exception as e:  # a worker's failure names its run; finished runs stay finished
                    raise GenclsError(f"run {futures[f]} failed: {type(e).__name__}: {e} "
                                      f"(see logs/; rerun compare to continue)") from e
    if todo:
        log(f"compare: trained {len(todo)} run(s) in {_fmt_time(time.time() - t0)}")

    summary = {"settings": settings, "methods": _summarise(cfg, results),
               "runs": sorted(results, key=lambda r: (cfg.methods.index(r["method"]), r["seed"]))}
    atomic_write_json(out / "compare.json", summary)
    atomic_write_bytes(out / "compare.md", compare_markdown(summary).encode())
    plot_compare(summary, out / "compare.png")
    log(f"wrote {out / 'compare.md'}, {out / 'compare.json'} and {out / 'compare.png'}")
    return summary


def load_compare(path: str | Path) -> dict:
    path = Path(path)
    return read_json(path / "compare.json" if path.is_dir() else path)


def is_compare_folder(path: str | Path) -> bool:
    return (Path(path) / "compare.json").is_file()


__all__ = ["DEFAULT_METHODS", "CompareConfig", "compare", "compare_markdown", "is_compare_folder", "load_compare",
           "plot_compare"]
