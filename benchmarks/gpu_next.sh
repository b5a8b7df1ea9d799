#!/usr/bin/env bash
# The GPU checks issue 7 still owes (written in a session without a GPU; run on one H100, ~9 min):
#   GENCLS_DATA=<folder with MNIST/raw> OUT=<results folder> bash benchmarks/gpu_next.sh
# 1. several seeds on CUDA: the stacked step equals separate steps (tests), and its speed-up
# 2. the plain and the optimised step's time to 5 / 2 / 1.5 % test error, in the same run
# 3. `gencls train --seeds 1-5` end to end (stacked, the default on CUDA)
# 4. the 300-epoch MNIST-100 protocol, wall time, validating every 10 epochs (target <= 5 min)
# Writes seeds_speed_*.json, to_error.json, seeds_metrics/, protocol_metrics.jsonl and log under $OUT.
set -uo pipefail
OUT=${OUT:-runs/gpu-next}
source "$(dirname "$0")/gpu_env.sh"
mkdir -p "$OUT/seeds_metrics"
# 1. (~1.5 min)
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_seeds.py -k "stacked_improved_gan_step" 2>&1 | tail -3
for prec in fp32 bf16; do
  timeout 150 $PY benchmarks/seeds_speed.py --device cuda --precision $prec --seeds 1,5,10 --steps 200 \
    --out "$OUT/seeds_speed_$prec.json" | tail -5
done
# 2. (~5 min: each variant stops at 1.5 % or after 2.5 minutes)
timeout 400 $PY benchmarks/speed.py --device cuda --precision bf16 --cuda-graphs --steps 300 --to-error \
  --max-minutes 2.5 --run-dir /tmp/speed_runs --out "$OUT/to_error.json" | tail -6
# 3. (~1 min)
time timeout 120 $PY -m gencls train --device cuda --seeds 1-5 --epochs 3 --no-progress --no-tensorboard \
  --sample-every 0 --out /tmp/run_seeds --overwrite 2>&1 | tail -8
for s in 1 2 3 4 5; do cp /tmp/run_seeds/seed-$s/metrics.jsonl "$OUT/seeds_metrics/seed-$s.jsonl" 2>/dev/null; done
cp /tmp/run_seeds/seeds.json "$OUT/seeds_metrics/" 2>/dev/null
# 4. (~5 min) the protocol: 300 epochs; validation + checkpoint every 10 epochs, sample grids every 50
time timeout 420 $PY -m gencls train --device cuda --precision bf16 --cuda-graphs --epochs 300 --eval-every 10 \
  --sample-every 50 --no-progress --no-tensorboard --out /tmp/run_protocol --overwrite 2>&1 | tail -4
cp /tmp/run_protocol/metrics.jsonl "$OUT/protocol_metrics.jsonl" 2>/dev/null
