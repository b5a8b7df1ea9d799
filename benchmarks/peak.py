"""Benchmark: the machine's single-precision matrix-multiplication peak in GFLOP/s.

Times ``a @ b`` for n x n float32 matrices with torch's own thread count (or ``--threads``):
warm-up, then repeats; prints the best and the median. The best is the peak that
``benchmarks/speed.py`` divides achieved GFLOP/s by.

    python benchmarks/peak.py                  # 2048 x 2048 on the CPU
    python benchmarks/peak.py --device cuda    # TF32 off: true fp32 on the GPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import gencls  # noqa: F401 -- before torch: the OpenMP spin count the command line runs with
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(n: int = 2048, device: str | torch.device = "cpu", repeats: int = 10, warmup: int = 3,
                dtype: torch.dtype = torch.float32) -> dict:
    """{"gflops_best", "gflops_median", "n", "threads", "device", "dtype"} of n x n matmul."""
    device = torch.device(device)
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        inner = 1 if device.type == "cpu" else 20  # GPU: amortise the launch and the sync
        for _ in range(warmup):
            torch.mm(a, b, out=c)
        _sync(device)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b, out=c)
            _sync(device)
            times.append((time.perf_counter() - t) / inner)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    flop = 2.0 * n ** 3
    return {"gflops_best": flop / min(times) / 1e9, "gflops_median": flop / statistics.median(times) / 1e9,
            "n": n, "threads": torch.get_num_threads(), "device": str(device),
            "dtype": str(dtype).replace("torch.", "")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = matmul_peak(args.n, args.device, args.repeats, dtype=getattr(torch, args.dtype))
    print(f"{r['dtype']} matmul {r['n']}x{r['n']} on {r['device']} ({r['threads']} threads): "
          f"best {r['gflops_best']:.1f} GFLOP/s, median {r['gflops_median']:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
