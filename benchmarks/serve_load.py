"""Benchmark: the server's single-image latency under a bounded load, from a second process.

Starts ``gencls serve RUN`` on 127.0.0.1 (a free port) as a child process, then ``--clients``
threads send ``--requests`` single-image POST /predict requests in all (MNIST test images as
PNG), and report latency p50/p90/p99/max, errors and requests per second, with the server's own
batching counters. Loopback only, bounded in count (``--requests``) and time (``--max-seconds``);
the server is stopped at the end.

    python benchmarks/serve_load.py --run runs/demo --clients 8 --requests 2000 --out runs/bench-serve.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from gencls.data import load_split


def server_rss_mb(pid: int) -> float:
    """Resident memory of the server process (Linux /proc), MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1, help="the server's inference threads")
    p.add_argument("--max-seconds", type=float, default=600, help="stop sending after this long")
    p.add_argument("--out", help="JSON file for the figures")
    args = p.parse_args()
    if not (1 <= args.clients <= 64 and 1 <= args.requests <= 100_000):
        p.error("--clients 1..64 and --requests 1..100000")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", prefix="gencls-serve-", suffix=".log", delete=False)
    server = subprocess.Popen([sys.executable, "-m", "gencls", "serve", args.run, "--host", "127.0.0.1",
                               "--port", str(port), "--threads", str(args.threads), "--log-level", "warning"],
                              stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        t0 = time.time()
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() - t0 > 120:
                log.seek(0)
                raise SystemExit(f"server did not start:\n{log.read()}")
            time.sleep(0.2)
        images = load_split("mnist", "test", log=lambda s: None).images[:500, 0].numpy()
        payloads = []
        for a in images:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            payloads.append(buf.getvalue())

        latencies, errors, lock = [], [], threading.Lock()
        counter = iter(range(args.requests))
        deadline = time.time() + args.max_seconds

        def client():
            with httpx.Client(base_url=url, timeout=30) as c:
                while time.time() < deadline:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    t = time.perf_counter()
                    try:
                        r = c.post("/predict", files=[("files", (f"{i}.png", payloads[i % len(payloads)], "image/png"))])
                        ok = r.status_code == 200 and len(r.json()["predictions"]) == 1
                        why = None if ok else f"HTTP {r.status_code}"
                    except httpx.HTTPError as e:
                        ok, why = False, type(e).__name__
                    dt = time.perf_counter() - t
                    with lock:
                        (latencies.append(dt) if ok else errors.append(why))

        with httpx.Client(base_url=url) as c:  # warm-up, not counted
            for i in range(20):
                c.post("/predict", files=[("files", ("w.png", payloads[i], "image/png"))])
            before = c.get("/health").json()["inference"]
        rss_before = server_rss_mb(server.pid)
        rss_samples = []
        sampler_stop = threading.Event()

        def sample_rss():
            while not sampler_stop.wait(0.5):
                rss_samples.append(server_rss_mb(server.pid))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        sampler_stop.set()
        after = httpx.get(url + "/health").json()["inference"]
        rss_after = server_rss_mb(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        os.unlink(log.name)
    lat = np.array(latencies) * 1000
    batches = after["batches"] - before["batches"]
    result = {"clients": args.clients, "requests": len(latencies) + len(errors), "ok": len(latencies),
              "errors": len(errors), "error_kinds": sorted(set(errors)), "server_threads": args.threads,
              "seconds": wall, "requests_per_second": len(latencies) / wall,
              "latency_ms": {k: float(np.percentile(lat, q)) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))}
              | {"max": float(lat.max()), "mean": float(lat.mean())},
              "server_batches": batches, "mean_batch": (after["images"] - before["images"]) / max(1, batches),
              "largest_batch": after["largest_batch"],
              "server_rss_mb": {"before": rss_before, "after": rss_after, "peak": max(rss_samples + [rss_after]),
                                "growth": rss_after - rss_before}}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
