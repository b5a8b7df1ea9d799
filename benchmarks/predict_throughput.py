"""Benchmark: predict throughput on MNIST test images, PyTorch vs ONNX Runtime.

Two measurements, each over the same ``--n`` test images (default all 10,000):
- in memory: float tensors/arrays already decoded, batches of ``--batch`` (the model alone:
  probabilities and out-of-distribution score);
- files: ``gencls.predict(run, folder)`` against ``OnnxClassifier(model).predict(folder)`` on the
  images written as PNG files (decoding included), what ``gencls predict`` does.

    python benchmarks/predict_throughput.py --run runs/demo --threads 1 --out runs/bench-predict.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import gencls  # before torch: the OpenMP spin count the command line runs with
import torch
from PIL import Image

from gencls.data import load_split
from gencls.export import export_onnx
from gencls.onnx_runtime import OnnxClassifier


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for both PyTorch and ONNX Runtime")
    p.add_argument("--repeats", type=int, default=3, help="in-memory timings: best of this many")
    p.add_argument("--onnx", help="an exported model (default: export one to a temporary folder)")
    p.add_argument("--no-files", action="store_true", help="skip the PNG-file measurement")
    p.add_argument("--out", help="JSON file for the figures")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    run = gencls.load_run(args.run)
    gencls.api.ood_calibration(run, log=lambda s: None)
    test = load_split(run.config.dataset, "test", log=lambda s: None)
    x = test.images[: args.n].float().div(255)
    tmp = Path(tempfile.mkdtemp(prefix="gencls-bench-"))
    onnx_path = Path(args.onnx) if args.onnx else tmp / "model.onnx"
    if not args.onnx:
        export_onnx(run, onnx_path, n_check=500, log=lambda s: None)
    clf = OnnxClassifier(onnx_path, threads=args.threads)
    xn = x.numpy()

    def torch_mem():
        run.probabilities_and_scores(x, args.batch)

    def ort_mem():
        for i in range(0, len(xn), args.batch):
            clf.run(xn[i : i + args.batch])

    # the two agree on every image
    _, probs, scores = clf.run(xn[:1000])
    agree = float((probs.argmax(1) == run.predict_proba(x[:1000]).argmax(1).numpy()).mean())
    result = {"images": len(x), "batch": args.batch, "threads": args.threads, "machine": platform.processor() or
              platform.machine(), "python": sys.version.split()[0], "torch": torch.__version__,
              "same_class_first_1000": agree, "in_memory": {}, "files": {}}
    for name, fn in (("pytorch", torch_mem), ("onnxruntime", ort_mem)):
        fn()  # warm-up
        secs = best_of(fn, args.repeats)
        result["in_memory"][name] = {"seconds": secs, "images_per_second": len(x) / secs}
        print(f"in memory, {name:<11}: {len(x) / secs:10.0f} images/s ({secs:.3f} s for {len(x)})", flush=True)

    if not args.no_files:
        folder = tmp / "png"
        folder.mkdir()
        for i, a in enumerate(test.images[: args.n, 0].numpy()):
            Image.fromarray(a).save(folder / f"{i:05d}.png")
        for name, fn in (("pytorch", lambda: gencls.predict(run, [folder], batch_size=args.batch)),
                         ("onnxruntime", lambda: clf.predict([folder], batch_size=args.batch))):
            t = time.perf_counter()
            rows = fn()
            secs = time.perf_counter() - t
            assert len(rows) == len(x) and not any(r.error for r in rows)
            result["files"][name] = {"seconds": secs, "images_per_second": len(x) / secs}
            print(f"PNG files, {name:<11}: {len(x) / secs:10.0f} images/s ({secs:.2f} s for {len(x)})", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
