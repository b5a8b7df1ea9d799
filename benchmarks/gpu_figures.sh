#!/usr/bin/env bash
# The figures of one short GPU session (one H100, ~9 minutes), as one script:
#   1. the CUDA-only tests (device-side divergence guard, CUDA-graphed step);
#   2. the improved-gan step speed, plain vs optimised (fp32), and optimised with bf16 + CUDA graphs;
#   3. in parallel on the one GPU (MPS when it starts): `gencls compare` of all five methods on
#      MNIST with 100 labels (3 seeds), and improved-gan vs supervised on Fashion-MNIST with 100 and
#      1000 labels (1 seed), MINUTES of training per run.
# Usage, in the repository root:  bash benchmarks/gpu_figures.sh DATA_GZ OUT [MINUTES]
# DATA_GZ holds MNIST/*.gz and FashionMNIST/*.gz (the four IDX files of each, gzipped; the GPU
# machine is offline). OUT receives log, speed_*.json, gpu_util.csv and runs.tar.gz (the run
# folders without checkpoints).
set -u
GZ=${1:?data dir}; OUT=${2:?out dir}; MIN=${3:-4.5}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 GENCLS_DATA=/tmp/gencls-data
RUNS=/tmp/gencls-gpu-runs; mkdir -p "$OUT" "$RUNS"
exec > >(tee -a "$OUT/log") 2>&1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
for d in MNIST FashionMNIST; do
  mkdir -p $GENCLS_DATA/$d/raw
  for f in "$GZ"/$d/*.gz; do gunzip -c "$f" > $GENCLS_DATA/$d/raw/$(basename "$f" .gz); done
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
stamp "1. CUDA tests"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_speed.py -k cuda 2>&1 | tail -4
stamp "2. step speed"
timeout 50 python3 benchmarks/speed.py --device cuda --steps 300 --out "$OUT/speed_fp32.json" | tail -6
timeout 40 python3 benchmarks/speed.py --device cuda --precision bf16 --cuda-graphs --variants fused --steps 300 \
  --out "$OUT/speed_bf16_graphs.json" | tail -4
stamp "3. compares, $MIN minutes per run"
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
  if timeout 40 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then stamp "MPS on"
  else echo quit | nvidia-cuda-mps-control; stamp "MPS did not answer: off"; fi
else stamp "no MPS"; fi
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu_util.csv" &
smi=$!
C="python3 -m gencls compare --device cuda --threads 1 --epochs 300 --minutes $MIN"
$C --methods improved-gan,acgan,vae-m2,aae,supervised --dataset mnist --labels 100 --seeds 3 --jobs 15 \
   --out $RUNS/compare-mnist-100 > $RUNS/compare-mnist-100.log 2>&1 &
p1=$!
$C --methods improved-gan,supervised --dataset fashion-mnist --labels 100 --seeds 1 --jobs 2 \
   --out $RUNS/compare-fashion-100 > $RUNS/compare-fashion-100.log 2>&1 &
p2=$!
$C --methods improved-gan,supervised --dataset fashion-mnist --labels 1000 --seeds 1 --jobs 2 \
   --out $RUNS/compare-fashion-1000 > $RUNS/compare-fashion-1000.log 2>&1 &
p3=$!
wait $p1 $p2 $p3
kill $smi 2>/dev/null
stamp "done"
for c in compare-mnist-100 compare-fashion-100 compare-fashion-1000; do
  cat $RUNS/$c/compare.md 2>/dev/null || tail -20 $RUNS/$c.log
done
(cd $RUNS && tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude='tensorboard' --exclude='tb' .)
ls -la "$OUT"
