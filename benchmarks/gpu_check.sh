#!/usr/bin/env bash
# The GPU checks of issue 7 (speed), as one script for one H100 (about 6-7 minutes).
#   GENCLS_DATA=<folder with MNIST/raw> OUT=<results folder> bash benchmarks/gpu_check.sh
# Writes six speed_*.json, run_graphs_metrics.jsonl and log (everything printed) under $OUT: 8 files.
set -uo pipefail
OUT=${OUT:-runs/gpu}
source "$(dirname "$0")/gpu_env.sh"
# 1. correctness on CUDA: device-side guard, CUDA-graph step (fp32 and bf16), fused == plain
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_speed.py -k "cuda or fused_step or guard" 2>&1 | tail -5
# 2. step speed, plain vs optimised, in the same run for each setting (~30-40 s each)
for args in "" "--precision tf32" "--precision bf16" "--cuda-graphs" "--precision bf16 --cuda-graphs" \
            "--precision tf32 --cuda-graphs"; do
  name=speed$(echo "$args" | tr -d ' -' | sed 's/precision/_/;s/cudagraphs/_graphs/')
  timeout 150 $PY benchmarks/speed.py --device cuda $args --steps 1000 --out "$OUT/$name.json" \
    | tail -4
done
# 3. where the time goes on the GPU (optimised step, bf16, no graphs)
timeout 120 $PY benchmarks/speed.py --device cuda --precision bf16 --variants fused --steps 200 --profile 20 \
  --out /tmp/speed_profile.json | tail -30
# 4. the real trainer end to end with CUDA graphs: 3 epochs of MNIST-100. metrics.jsonl has the
#    training seconds per epoch; the wall time printed by `time` adds start-up, validation,
#    checkpoints and sample grids (per-epoch overhead = (wall - start-up - sum of epoch_seconds) / 3)
time timeout 120 $PY -m gencls train --device cuda --precision bf16 --cuda-graphs --epochs 3 --no-progress \
  --no-tensorboard --out /tmp/run_graphs --overwrite 2>&1 | tail -5
cp /tmp/run_graphs/metrics.jsonl "$OUT/run_graphs_metrics.jsonl" 2>/dev/null
