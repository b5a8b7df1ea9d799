"""Benchmark: the speed of the improved-gan MNIST training step, plain against optimised, in one run.

For each variant (``plain``: the reference step, ``--set fused=false``; ``fused``: the optimised
default) it times training steps on real MNIST batches drawn on the device exactly as the
trainer draws them (batch 100: 100 labelled + 2 x 100 unlabelled images per step), and reports
ms/step, seconds per epoch (550 steps: MNIST-100 with 5,000 validation images), unlabelled
images/s (the trainer's images_per_second), achieved GFLOP/s from the method's
``flops_per_step`` and its ratio to the fp32 matmul peak measured at the start of the same run
(``benchmarks/peak.py``; with ``--precision bf16`` the bf16 peak too), peak RSS, and on CUDA
the peak GPU memory and the GPU utilisation sampled by NVML. Each variant runs in its own
subprocess so that RSS, compilation caches and CUDA graphs do not leak between them. It writes
one JSON file and prints a table.

``--to-error`` also trains each variant (``gencls.train``) and records the wall time to reach
5 %, 2 % and 1.5 % MNIST-100 *test* error. The test set is evaluated after every epoch for this
record only; the run's model selection still uses the validation split.

On the CPU each variant also measures the matmul peak right before and after its timed steps
(``% adj. peak``: the host's speed drifts, so this is the fairer ratio), and ``--rounds N``
alternates the variants N times and reports the median round with every round's figures.

``--profile`` prints where the time of the optimised step goes (torch.profiler, top operators by
self time) and stores it in the JSON.

    python benchmarks/speed.py                                   # CPU, fp32, ~1-2 minutes
    python benchmarks/speed.py --device cuda --precision bf16 --cuda-graphs --steps 300
    python benchmarks/speed.py --device cuda --to-error --max-epochs 100
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import gencls  # before torch: the OpenMP spin count the command line runs with
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak import matmul_peak  # noqa: E402

ITERS_PER_EPOCH = 550  # MNIST-100: 60,000 - 5,000 validation = 55,000 unlabelled / batch 100
THRESHOLDS = (0.05, 0.02, 0.015)
PROTOCOL_EPOCHS = 300  # Improved GAN: 300 epochs on MNIST


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _GpuSampler:
    """GPU utilisation (percent of time a kernel ran, NVML) sampled every 50 ms in a thread."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self._stop = device, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        smi = False
        while not self._stop.wait(0.05):
            try:
                if not smi:
                    self.samples.append(torch.cuda.utilization(self.device))
                else:
                    out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-i", str(self.device.index or 0)], capture_output=True, text=True, timeout=5)
                    self.samples.append(float(out.stdout.split()[0]))
            except Exception:  # noqa: BLE001 -- no pynvml: try nvidia-smi once, then give up
                if smi:
                    return
                smi = True

    def __enter__(self):
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def measure_variant(variant: str, device: str, precision: str, compile_: bool, cuda_graphs: bool, steps: int,
                    warmup: int, batch: int, profile: int, data_root: str | None) -> dict:
    """Time ``steps`` training steps of one variant in this process; returns its record."""
    from gencls.data import load_split
    from gencls.methods import create_method
    from gencls.training.trainer import DeviceImages, _GraphedStep
    from gencls.utils import autocast_for, resolve_device

    dev = resolve_device(device)
    data = load_split("mnist", "train", data_root, log=lambda *_: None)
    x_all = DeviceImages(data.images, dev)  # uint8 on the device, as the trainer holds it
    y_all = data.labels.to(dev)
    torch.manual_seed(1)
    method = create_method("improved-gan", {"fused": variant == "fused"}, data.image_shape,
                           len(data.classes)).to(dev).train()
    method.guard.lazy = True
    gen = torch.Generator().manual_seed(2)
    method.setup(x_all[torch.randperm(len(x_all), generator=gen)[:500].to(dev)])
    if compile_:
        method.compile_networks()
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    autocast = autocast_for(dev, precision)
    total = warmup + steps
    lab = torch.randint(0, len(x_all), (total, batch), generator=gen).to(dev)
    unl = torch.randint(0, len(x_all), (total, 2 * batch), generator=gen).to(dev)

    if cuda_graphs:
        graphed = _GraphedStep(method, x_all, y_all, autocast)

        def step(i):
            return graphed(lab[i], unl[i])
    else:
        def step(i):
            with autocast():
                return method.train_step(x_all[lab[i]], y_all[lab[i]], x_all[unl[i]])

    t_compile = time.perf_counter()
    for i in range(warmup):
        step(i)
    _sync(dev)
    warmup_seconds = time.perf_counter() - t_compile
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    adjacent = [matmul_peak(2048, dev, repeats=5)["gflops_best"]] if dev.type == "cpu" else []
    with _GpuSampler(dev) as sampler:
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(warmup, total):
            losses = step(i)
        _sync(dev)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    method.guard.check()
    if adjacent:  # the CPU's speed drifts on a shared host: the peak just before and after these steps
        adjacent.append(matmul_peak(2048, dev, repeats=5)["gflops_best"])
    s_step = seconds / steps
    flops = method.flops_per_step(batch)["total"]
    rec = {"variant": variant, "ms_per_step": 1000 * s_step,
           # CPU time of all threads per step: on a shared machine, less disturbed by others than wall time
           "cpu_ms_per_step": 1000 * cpu / steps,
           "seconds_per_epoch": s_step * ITERS_PER_EPOCH,
           "protocol_minutes_300_epochs": s_step * ITERS_PER_EPOCH * PROTOCOL_EPOCHS / 60,
           "images_per_second": batch / s_step, "gflops_per_step": flops / 1e9, "achieved_gflops": flops / s_step / 1e9,
           "warmup_seconds": warmup_seconds, "steps": steps,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "final_losses": {k: float(v) for k, v in losses.items()}, "gpu_utilisation_percent": sampler.mean()}
    if adjacent:
        rec["adjacent_peak_gflops"] = sum(adjacent) / len(adjacent)
        rec["percent_of_adjacent_peak"] = 100 * rec["achieved_gflops"] / rec["adjacent_peak_gflops"]
    if dev.type == "cuda":
        rec["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    if profile:
        rec["profile"] = _profile(step, warmup, profile, dev)
    return rec


def _profile(step, start: int, n: int, dev: torch.device) -> dict:
    """Top operators by self time over ``n`` steps (steps reused from the timed range)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(start, start + n):
            step(i)
        _sync(dev)
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    top = [{"op": e.key, "calls_per_step": e.count / n, "ms_per_step": getattr(e, key) / 1000 / n,
            "share": getattr(e, key) / total} for e in events[:20]]
    matmul = sum(getattr(e, key) for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul",
                                                               "aten::linear", "aten::_addmm_activation")
                 or "gemm" in e.key.lower() or "sgemm" in e.key.lower())
    return {"by": key, "matmul_share": matmul / total, "top": top,
            "table": prof.key_averages().table(sort_by=key, row_limit=15)}


def time_to_error(variant: str, args) -> dict:
    """Train one variant; wall time (training + per-epoch evaluation) to each test-error threshold."""
    from gencls.data import load_split
    from gencls.training.trainer import error_rate

    test = load_split("mnist", "test", args.data_root, log=lambda *_: None)
    rows, t0 = [], time.time()
    x_test, y_test = test.images.float() / 255, test.labels

    def on_epoch_end(record, method):
        err = error_rate(method, x_test.to(method.device), y_test.to(method.device))
        rows.append({"epoch": record["epoch"], "test_error": err, "val_error": record["val_error"],
                     "elapsed_seconds": time.time() - t0, "epoch_seconds": record["epoch_seconds"]})
        print(f"[{variant}] epoch {record['epoch']}: test {100 * err:.2f}%, {rows[-1]['elapsed_seconds']:.0f}s",
              flush=True)
        if err <= min(THRESHOLDS):
            raise _Reached

    cfg = gencls.TrainConfig(method="improved-gan", labels=100, epochs=args.max_epochs, minutes=args.max_minutes,
                             seed=args.seed, data_seed=args.seed, device=args.device, threads=args.threads, precision=args.precision,
                             compile=args.compile, cuda_graphs=args.cuda_graphs and variant == "fused",
                             data_root=args.data_root, out=str(Path(args.run_dir) / variant), progress=False,
                             tensorboard=False, sample_every=0, method_config={"fused": variant == "fused"})
    try:
        gencls.train(cfg, overwrite=True, on_epoch_end=on_epoch_end)
    except _Reached:
        pass
    reached = {}
    for thr in THRESHOLDS:
        hit = next((r for r in rows if r["test_error"] <= thr), None)
        reached[f"seconds_to_{100 * thr:g}pct"] = hit["elapsed_seconds"] if hit else None
        reached[f"epochs_to_{100 * thr:g}pct"] = hit["epoch"] if hit else None
    return {"variant": variant, "seed": args.seed, **reached, "epochs_run": len(rows),
            "best_test_error": min((r["test_error"] for r in rows), default=None), "per_epoch": rows}


class _Reached(Exception):
    pass


def _child(args) -> int:
    rec = measure_variant(args.child, args.device, args.precision, args.compile,
                          args.cuda_graphs and args.child == "fused", args.steps, args.warmup, 100, args.profile,
                          args.data_root)
    print("@@RESULT@@" + json.dumps(rec))
    return 0


def _run_child(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--device", args.device, "--precision", args.precision,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--profile", str(args.profile)]
    cmd += ["--compile"] if args.compile else []
    cmd += ["--cuda-graphs"] if args.cuda_graphs else []
    cmd += ["--data-root", args.data_root] if args.data_root else []
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")), None)
    if proc.returncode != 0 or line is None:
        lines = proc.stderr.strip().splitlines() or ["failed"]
        errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", ln)]
        return {"variant": variant, "error": (errors or lines)[-1][:300]}
    return json.loads(line[len("@@RESULT@@"):])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (both variants)")
    p.add_argument("--cuda-graphs", action="store_true", help="capture the optimised step as a CUDA graph")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 150 CPU, 500 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; 20 with --compile)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument("--variants", default="plain,fused")
    p.add_argument("--rounds", type=int, default=1, help="measure the variants this many times, alternating; "
                   "report the median round (a shared host's speed drifts)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profile N steps of each variant")
    p.add_argument("--to-error", action="store_true", help="also train each variant to 5 / 2 / 1.5 %% test error")
    p.add_argument("--max-epochs", type=int, default=300, help="--to-error: stop after this many epochs")
    p.add_argument("--max-minutes", type=float, default=None, help="--to-error: time budget per variant")
    p.add_argument("--run-dir", default="runs/speed", help="--to-error: run folders")
    p.add_argument("--seed", type=int, default=1, help="--to-error: seed of the networks and the labelled draw")
    p.add_argument("--data-root")
    p.add_argument("--out", default="runs/speed.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if args.cuda_graphs and not cuda:
        p.error("--cuda-graphs needs --device cuda")
    if cuda and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.steps is None:
        args.steps = 500 if cuda else 150
    if args.warmup is None:
        args.warmup = 20 if args.compile else 5
    if args.child:
        return _child(args)

    dev = torch.device(args.device)
    peak = matmul_peak(2048 if not cuda else 8192, dev, repeats=10 if not cuda else 5)
    result = {"device": torch.cuda.get_device_name(dev) if cuda else (platform.processor() or platform.machine()),
              "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "precision": args.precision, "compile": args.compile, "cuda_graphs": args.cuda_graphs,
              "load_average_at_start": os.getloadavg(), "matmul_peak_fp32": peak,
              "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if args.precision == "bf16":
        result["matmul_peak_bf16"] = matmul_peak(2048 if not cuda else 8192, dev, repeats=5, dtype=torch.bfloat16)
    ref = result["matmul_peak_bf16" if args.precision == "bf16" else "matmul_peak_fp32"]["gflops_best"]
    # tf32 is compared with the true-fp32 peak: its % can exceed 100 (tensor cores beat fp32 FMA units)
    print(f"matmul peak ({args.precision}): {ref:.1f} GFLOP/s on {result['device']} ({result['threads']} threads)",
          flush=True)

    rounds = {v: [] for v in args.variants.split(",")}
    for r in range(args.rounds):  # the variants alternate, so drift of the host hits both alike
        for v in rounds:
            rec = _run_child(v, args)
            if "achieved_gflops" in rec:
                rec["percent_of_peak"] = 100 * rec["achieved_gflops"] / ref
            rounds[v].append(rec)
            if rec.get("profile") and r == 0:
                print(f"\n--- profile of {v} (by {rec['profile']['by']}; matmul share "
                      f"{100 * rec['profile']['matmul_share']:.0f} %) ---\n{rec['profile']['table']}")
    result["variants"] = [_median_round(recs) for recs in rounds.values()]
    result["load_average_at_end"] = os.getloadavg()

    if args.to_error:
        result["to_error"] = [time_to_error(v, args) for v in args.variants.split(",")]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _print_table(result)
    print(f"wrote {out}")
    return 0


def _median_round(recs: list[dict]) -> dict:
    """One variant's record over rounds: the round of median ms/step, with every round's figures."""
    ok = [r for r in recs if "error" not in r]
    if not ok:
        return recs[0]
    rec = dict(sorted(ok, key=lambda r: r["ms_per_step"])[len(ok) // 2])
    if len(recs) > 1:
        for k in ("ms_per_step", "percent_of_peak", "percent_of_adjacent_peak", "adjacent_peak_gflops"):
            if k in rec:
                rec[f"{k}_rounds"] = [r.get(k) for r in ok]
        rec["profile"] = next((r["profile"] for r in ok if r.get("profile")), rec.get("profile"))
    return rec


def _print_table(result: dict) -> None:
    cols = [("variant", "{}"), ("ms_per_step", "{:.1f}"), ("seconds_per_epoch", "{:.1f}"),
            ("protocol_minutes_300_epochs", "{:.1f}"), ("images_per_second", "{:.0f}"),
            ("achieved_gflops", "{:.1f}"), ("percent_of_peak", "{:.1f}"), ("percent_of_adjacent_peak", "{:.1f}"),
            ("peak_rss_mb", "{:.0f}"), ("gpu_utilisation_percent", "{:.0f}")]
    heads = ["variant", "ms/step", "s/epoch", "300 ep (min)", "img/s", "GFLOP/s", "% peak", "% adj. peak", "RSS MB",
             "GPU %"]
    rows = [[(fmt.format(r[k]) if r.get(k) is not None else "-") for k, fmt in cols] if "error" not in r
            else [r["variant"], "failed: " + r["error"]] for r in result["variants"]]
    widths = [max([len(h)] + [len(row[i]) for row in rows if i < len(row) and len(row) > 2])
              for i, h in enumerate(heads)]
    print("\n" + "  ".join(h.rjust(w) for h, w in zip(heads, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    for r in result.get("to_error", []):
        print(f"{r['variant']}: to 5 % {r['seconds_to_5pct']}, 2 % {r['seconds_to_2pct']}, "
              f"1.5 % {r['seconds_to_1.5pct']} s (best test error {r['best_test_error']})")


if __name__ == "__main__":
    sys.exit(main())
