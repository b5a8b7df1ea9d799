"""Compare methods on the same data, splits and budget: every method x seed is trained, evaluated
on the test set once, and summarised in ``compare.json``, ``compare.md`` and ``compare.png``.

Seed s sets both the networks' seed and the data seed, so seed s is one draw of the labelled
images, the same draw for every method. Each run lives in ``OUT/runs/METHOD-seedS``; a run is
finished when its ``result.json`` exists. Calling ``compare`` again on the same folder trains only
what is missing: finished runs are reused as they are, a run stopped mid-way resumes from its last
checkpoint (its ``--minutes`` budget then counts again from the resume; the table says which runs
were resumed), and a run whose training finished but whose evaluation did not is only evaluated.
A run whose training diverges (or crashes) is recorded in its ``failed.json``, shown in the table
and left out of the means; the other runs go on. Failed runs are not retried: delete the run
folder to train it afresh (deleting only ``failed.json`` resumes it from its last checkpoint). Each run's training log is
``OUT/logs/METHOD-seedS.log``.
"""
from __future__ import annotations

import os
import statistics
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from gencls.errors import GenclsError, TrainingDiverged, TrainingStopped
from gencls.utils import atomic_write_bytes, atomic_write_json, read_json

# every method of the project, in the order of the README's table (the default of ``compare``)
DEFAULT_METHODS = ("improved-gan", "acgan", "vae-m2", "aae", "supervised")

# settings that must match for runs of an existing compare folder to be reused
_FIXED = ("dataset", "labels", "labelled", "epochs", "minutes", "val_size", "subset", "batch_size", "method_configs",
          "folder_test_rule")


@dataclass
class CompareConfig:
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    dataset: str = "mnist"
    labels: int | str | None = None  # None: the dataset's default, as train (100; a labelled folder: all)
    labelled: list[int] | None = None  # these training rows are every run's labelled images (``--labelled``)
    seeds: int = 3  # seeds 1..seeds
    epochs: int = 10
    minutes: float | None = None
    out: str = "runs/compare"
    jobs: int = 1
    threads: int | None = None
    device: str = "auto"
    data_root: str | None = None
    val_size: int | None = None  # None: train's default (10% of the training images, at most 5000)
    subset: int | None = None
    batch_size: int = 100
    method_configs: dict[str, dict] = field(default_factory=dict)  # per method: its --set values
    on_nan: str = "stop"  # a run's non-finite loss or exploding gradient: "stop" it (failed) or "skip" the batch
    folder_test_rule: int = 2  # a folder dataset's test hold-out (TrainConfig's); an older folder keeps 1

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
        chosen = TrainConfig(labels=self.labels, labelled=self.labelled).validate()
        self.labelled = chosen.labelled
        self.labels = len(self.labelled) if self.labelled is not None else chosen.labels
        if self.labelled is not None and self.subset is not None and self.seeds > 1:
            # refused before any run trains: seed 1's runs trained, then seed 2 was refused by row
            raise GenclsError(f"--labelled with --subset {self.subset} and --seeds {self.seeds}: seed s draws its own "
                              "--subset images (data seed s), so the --labelled rows are not among every seed's; "
                              "leave out --subset, or compare one seed (--seeds 1)")
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

        return TrainConfig(method=method, dataset=self.dataset, labels=self.labels, labelled=self.labelled,
                           val_size=self.val_size,
                           subset=self.subset, epochs=self.epochs, minutes=self.minutes, batch_size=self.batch_size,
                           seed=seed, data_seed=seed, device=self.device, out=out, data_root=self.data_root,
                           method_config=dict(self.method_configs.get(method, {})), threads=self.run_threads(),
                           progress=False, tensorboard=False, folder_test_rule=self.folder_test_rule,
                           on_nan=self.on_nan)


def _setting_text(key: str, value) -> str:
    if key == "labelled" and isinstance(value, list):
        return f"{len(value)} chosen rows"
    return repr(value)


def _run_one(train_cfg: dict, run_dir: str, jobs: int = 1) -> dict:
    """Train (or resume) one run, evaluate it on the test set, write its result.json. Picklable for workers.

    A run that diverges or crashes returns (and writes to ``failed.json``) a record with ``failed``
    set instead of raising, so that one bad run does not stop the others; errors a user can fix
    (missing data, an unwritable folder, a signal) still raise.
    """
    import torch

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

    cfg = TrainConfig.from_dict(train_cfg)
    record = {"method": cfg.method, "seed": cfg.seed, "data_seed": cfg.data_seed, "run": out.name}
    try:
        trained_mark = out / "trained.json"
        if trained_mark.exists():  # trained before, its evaluation did not finish: never train it further
            resumed = read_json(trained_mark).get("resumed", False)
        else:
            resumed = (out / "checkpoints" / "last.safetensors").exists()
            train(cfg, resume=resumed, overwrite=not resumed, log=log)
            atomic_write_json(trained_mark, {"resumed": resumed})
        run = load_run(out, device=cfg.device)  # evaluated where it trained (the GPU, when it had one)
        report = evaluate(run, "test", log=log)
        rows = read_metrics(out)
        val = run.meta.get("val_error")
        result = {**record, "device": _device_name(cfg.device),
                  "test_error_percent": report["error_percent"], "val_error_percent": None if val is None else 100 * val,
                  "best_epoch": run.meta["epoch"], "epochs": len(rows),
                  "train_seconds": sum(r["epoch_seconds"] for r in rows),
                  "parameters": run.method.trained_parameter_count(),
                  "threads": cfg.threads or torch.get_num_threads(), "jobs": jobs, "resumed": resumed,
                  "val_images": (run.meta.get("split_sizes") or {}).get("validation"),
                  "labelled_images": (run.meta.get("split_sizes") or {}).get("labelled")}
        atomic_write_json(out / "result.json", result)
        return result
    except TrainingDiverged as e:
        log(f"failed: {e}")
        return _failed(out, record, str(e))
    except TrainingStopped as e:  # a signal: the run continues when the same compare command runs again
        # train's advice (train --resume, or --overwrite, which compare has not: it starts such a run afresh)
        text = str(e).split(" Continue with `gencls train --resume", 1)[0].split("; start again with --overwrite")[0]
        raise TrainingStopped(f"{text.rstrip('.')}. Run the same compare command again to continue.",
                              e.exit_code) from None
    except GenclsError:
        raise
    except Exception as e:  # a crash of this run: recorded, the others go on
        log("failed:\n" + traceback.format_exc())
        return _failed(out, record, f"{type(e).__name__}: {e}")
    finally:
        logf.close()


def _result_is_current(run_dir: Path, result: dict) -> bool:
    """Whether result.json describes the run's best checkpoint now (a run resumed with ``train
    --resume`` after compare finished it has a newer one). Read from the checkpoint's own header,
    not best.json: a kill between their writes leaves best.json describing the previous best."""
    from gencls.training.checkpoint import read_checkpoint_meta

    try:
        meta = read_checkpoint_meta(run_dir / "checkpoints" / "best.safetensors")
        return meta["epoch"] == result["best_epoch"]
    except (GenclsError, KeyError, TypeError):
        return True  # nothing to compare with: keep the result


def _runs_test_rule(out: Path) -> int:
    """The folder test rule of a compare folder's existing runs (one rule, or refused)."""
    from gencls.config import TrainConfig

    rules = {TrainConfig.from_dict(read_json(p)).folder_test_rule for p in (out / "runs").glob("*/config.json")}
    if len(rules) > 1:
        raise GenclsError(f"--out {out}: its runs hold out folder test splits by different rules "
                          f"({sorted(rules)}); their test errors are not comparable: use another --out")
    return rules.pop() if rules else 2


def _failed(out: Path, record: dict, error: str) -> dict:
    failed = {**record, "failed": error}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "failed.json", failed)
    return failed


def _device_name(name: str) -> str:
    """The device a run trains on, in words: "cpu" or e.g. "cuda (NVIDIA H100 80GB HBM3)"."""
    import torch

    from gencls.utils import resolve_device

    device = resolve_device(name)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _summarise(cfg: CompareConfig, results: list[dict]) -> list[dict]:
    """One row per method: statistics over its finished runs (sample std, n - 1), its failed seeds listed."""
    from gencls.methods import get_method_class

    key = f"{cfg.dataset}/{_labels_used(asdict(cfg), results)}"
    rows = []
    for m in cfg.methods:
        mine = [r for r in results if r["method"] == m]
        if not mine:
            continue
        rs = sorted((r for r in mine if not r.get("failed")), key=lambda r: r["seed"])
        failed = sorted(r["seed"] for r in mine if r.get("failed"))
        pub = get_method_class(m).published_results.get(key)
        row = {"method": m, "seeds": [r["seed"] for r in rs], "failed_seeds": failed,
               "test_errors_percent": [r["test_error_percent"] for r in rs], "mean": None, "std": None,
               "best": None, "worst": None, "epochs": None, "train_seconds": None, "parameters": None,
               "published": pub}
        if rs:
            errs = row["test_errors_percent"]
            best = min(rs, key=lambda r: r["test_error_percent"])
            worst = max(rs, key=lambda r: r["test_error_percent"])
            row.update({"mean": statistics.fmean(errs), "std": statistics.stdev(errs) if len(errs) > 1 else None,
                        "best": {"seed": best["seed"], "error": best["test_error_percent"]},
                        "worst": {"seed": worst["seed"], "error": worst["test_error_percent"]},
                        "epochs": statistics.fmean(r["epochs"] for r in rs),
                        "train_seconds": statistics.fmean(r["train_seconds"] for r in rs),
                        "parameters": rs[0]["parameters"]})
        rows.append(row)
    return rows


def _fmt_mean(r: dict) -> str:
    """``mean ± std (n=k)``; n=1 has no std; failed seeds are named."""
    failed = r.get("failed_seeds") or []
    fail = f"{len(failed)} failed (seed{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))})"
    if r["mean"] is None:
        return fail
    std = f" ± {r['std']:.2f}" if r.get("std") is not None else ""
    return f"{r['mean']:.2f}{std} (n={len(r['seeds'])}" + (f"; {fail}" if failed else "") + ")"


def table_cells(r: dict) -> list[str]:
    """The cells of one method's row, as in compare.md (the report's HTML table uses them too)."""
    from_run = r["mean"] is not None
    pub = r["published"]
    return [r["method"], _fmt_mean(r),
            f"{r['best']['error']:.2f} (seed {r['best']['seed']})" if from_run else "–",
            f"{r['worst']['error']:.2f} (seed {r['worst']['seed']})" if from_run else "–",
            _fmt_epochs(r["epochs"]) if from_run else "–", _fmt_time(r["train_seconds"]) if from_run else "–",
            f"{r['parameters']:,}" if from_run else "–", pub["error"] if pub else "none", pub["source"] if pub else "–"]


TABLE_HEADER = ["method", "test error % (mean ± std)", "best seed", "worst seed", "epochs", "training time",
                "parameters", "published test error %", "source"]


def _fmt_epochs(e: float) -> str:
    return f"{e:.0f}" if abs(e - round(e)) < 1e-9 else f"{e:.1f}"


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _labels_used(settings: dict, runs: list[dict]) -> str:
    """The labelled images per run: as set, else as the runs resolved the dataset's default."""
    if settings.get("labels") is not None:
        return str(settings["labels"])
    return _used(runs, "labelled_images", "default")


def _used(runs: list[dict], key: str, default) -> str:
    """What the runs used for ``key`` (threads, jobs): one value, or the values of a mix."""
    vals = sorted({r.get(key) for r in runs if not r.get("failed") and r.get(key) is not None})
    if not vals:
        return str(default)
    return str(vals[0]) if len(vals) == 1 else "mixed (" + ", ".join(map(str, vals)) + ")"


def compare_markdown(summary: dict) -> str:
    """compare.md: a heading, the settings sentence, the table, and the notes (the last line)."""
    s = summary["settings"]
    runs = summary.get("runs", [])
    budget = f"{s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}"
    if s.get("minutes"):
        budget += f" or {s['minutes']} min of training (checked at epoch ends), whichever ends first"
    devices = sorted({r.get("device") or "unrecorded" for r in runs if not r.get("failed")})
    lines = [f"# Comparison: {s['dataset']}, {_labels_used(s, runs)} labels, seeds 1..{s['seeds']}", "",
             f"Budget per run: {budget}, batch {s['batch_size']}, "
             f"validation {_used(runs, 'val_images', 'default' if s.get('val_size') is None else s['val_size'])} images"
             + (f", subset {s['subset']}" if s.get("subset") else "")
             + f"; device {', '.join(devices) or s.get('device', 'auto')}, "
             f"threads per run {_used(runs, 'threads', s.get('threads') or 'default')}, "
             f"{_used(runs, 'jobs', s.get('jobs', 1))} run(s) in parallel. "
             "Each run is evaluated once on the test set with its best-validation checkpoint; "
             + ("the labelled images are the --labelled rows (every method and seed), seed s draws the validation "
                "images." if s.get("labelled") else
                "seed s draws the labelled images (the same draw for every method)."), "",
             "| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for r in summary["methods"]:
        lines.append("| " + " | ".join(table_cells(r)) + " |")
    notes = ("std: the sample standard deviation over seeds (n - 1); none with one seed. Training time: mean per "
             "run, training epochs only (no evaluation). Parameters: those the optimizers train (no EMA copies). "
             "Published figures come from the papers' own, much longer training.")
    failed = [r for r in runs if r.get("failed")]
    if failed:
        notes += (" Failed runs (left out of the statistics): "
                  + "; ".join(f"{r['method']} seed {r['seed']}: {r['failed']}" for r in failed) + ".")
    resumed = [f"{r['method']} seed {r['seed']}" for r in runs if r.get("resumed")]
    if resumed and s.get("minutes"):
        notes += (f" Resumed after a stop ({', '.join(resumed)}): the time budget started again at the resume.")
    lines += ["", notes, ""]
    return "\n".join(lines)


def plot_compare(summary: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["methods"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * max(1, len(rows)), 4.0), dpi=100)
    xs = range(len(rows))
    ax.bar(xs, [r["mean"] if r["mean"] is not None else 0.0 for r in rows],
           yerr=[r["std"] or 0.0 for r in rows], capsize=6, color="#9ecae1",
           edgecolor="#3182bd", label="mean ± std over seeds (sample std)")
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
    ax.set_title(f"{s['dataset']}, {_labels_used(s, summary.get('runs', []))} labels, {s['seeds']} seed(s)",
                 fontsize=10)
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
    if settings_path.exists() and any((out / "runs").glob("*/config.json")):  # runs made with those settings
        old = read_json(settings_path)
        if "folder_test_rule" not in old:  # not recorded: the rule its runs were made with
            old["folder_test_rule"] = _runs_test_rule(out)
        cfg.folder_test_rule = old["folder_test_rule"]
        if cfg.val_size is None and "val_size" in old:  # a default left out: the folder's value stands
            cfg.val_size = old["val_size"]
        if cfg.labels is None and cfg.labelled is None and "labels" in old:
            cfg.labels = old["labels"]  # likewise (a folder from when compare's default was 100)
        elif old.get("labels") is None and not old.get("labelled") and cfg.labels is not None and cfg.labelled is None:
            # a folder left to the dataset's default, now asked for a count: the same if that is what its runs used
            used = {read_json(p).get("labels") for p in (out / "runs").glob("*/config.json")}
            if used == {cfg.labels}:
                cfg.labels = None
        settings = asdict(cfg)
        changed = [k for k in _FIXED if old.get(k) != settings.get(k)]
        if changed:
            raise GenclsError(f"--out {out}: holds a comparison with other settings ({', '.join(changed)}: "
                              + "; ".join(f"{k} was {_setting_text(k, old.get(k))}, now "
                                          f"{_setting_text(k, settings.get(k))}" for k in changed)
                              + "); use another --out or the same settings")
    settings = asdict(cfg)
    atomic_write_json(settings_path, settings)

    todo, results = [], []
    for m in cfg.methods:
        for s in range(1, cfg.seeds + 1):
            run_dir = out / "runs" / cfg.run_name(m, s)
            if (run_dir / "result.json").exists() and _result_is_current(run_dir, read_json(run_dir / "result.json")):
                results.append(read_json(run_dir / "result.json"))
            elif (run_dir / "result.json").exists():  # trained further outside compare (train --resume)
                log(f"compare: {run_dir.name} has a newer best checkpoint than its result: evaluating it again")
                atomic_write_json(run_dir / "trained.json", {"resumed": True})
                todo.append((cfg.train_config(m, s, str(run_dir)).to_dict(), str(run_dir)))
            elif (run_dir / "failed.json").exists():
                results.append(read_json(run_dir / "failed.json"))
            else:
                todo.append((cfg.train_config(m, s, str(run_dir)).to_dict(), str(run_dir)))
    total = cfg.seeds * len(cfg.methods)
    n_failed = sum(1 for r in results if r.get("failed"))
    log(f"compare: {total} runs, {total - len(todo)} already done"
        + (f" ({n_failed} failed; delete a run's folder to train it again)" if n_failed else "")
        + f", {len(todo)} to train ({cfg.jobs} job(s)); run folders in {out / 'runs'}")

    def done(r: dict) -> None:
        results.append(r)
        if r.get("failed"):
            log(f"  [{len(results)}/{total}] {r['method']} seed {r['seed']}: FAILED: {r['failed']} "
                f"(log: {out / 'logs' / (r['run'] + '.log')})")
            return
        val = r["val_error_percent"]
        log(f"  [{len(results)}/{total}] {r['method']} seed {r['seed']}: test error {r['test_error_percent']:.2f}% "
            f"(val {'n/a' if val is None else f'{val:.2f}%'}, {r['epochs']} epochs, {_fmt_time(r['train_seconds'])})")

    t0 = time.time()
    if cfg.jobs == 1 or len(todo) <= 1:
        for tc, rd in todo:
            done(_run_one(tc, rd, 1))
    else:
        jobs = min(cfg.jobs, len(todo))
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as ex:
            futures = {ex.submit(_run_one, tc, rd, jobs): rd for tc, rd in todo}
            for f in as_completed(futures):
                try:
                    done(f.result())
                except Exception as e:  # an error to fix (data, folder, signal): names its run; finished runs stay
                    for other in futures:
                        other.cancel()  # runs not started yet wait for the rerun
                    if isinstance(e, TrainingStopped):  # a signal: its exit status (130/143) too
                        raise type(e)(f"run {Path(futures[f]).name}: {e}", e.exit_code) from e
                    if isinstance(e, GenclsError):
                        raise GenclsError(f"run {Path(futures[f]).name}: {e}") from e
                    raise GenclsError(f"run {futures[f]} failed: {type(e).__name__}: {e} "
                                      f"(see logs/; rerun compare to continue)") from e
    if todo:
        log(f"compare: trained {len(todo)} run(s) in {_fmt_time(time.time() - t0)}")

    summary = {"settings": settings, "methods": _summarise(cfg, results),
               "runs": sorted(results, key=lambda r: (cfg.methods.index(r["method"]), r["seed"])),
               "failed": sorted(r["run"] for r in results if r.get("failed"))}
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
           "plot_compare", "table_cells"]
