#!/usr/bin/env bash
# Data-parallel training on GPUs: a short check and the speed figures. Run from the repository root
# with MNIST in $GENCLS_DATA (gencls data fetch mnist). Budget: ~2 min on one GPU, ~5 min with 8.
set -euo pipefail
N=$(python -c "import torch; print(torch.cuda.device_count())")
echo "GPUs: $N"
# 1. one process per GPU (NCCL): trains, rank 0 writes, config.json records the world size
torchrun --standalone --nproc_per_node "$N" -m gencls train --method improved-gan --labels 100 --subset 11000 \
    --val-size 1000 --epochs 2 --device cuda --no-progress --no-tensorboard --out /tmp/ddp-gpu --overwrite
python -c "import json; c = json.load(open('/tmp/ddp-gpu/config.json')); print('world_size', c['world_size'])"
# 2. speed: N processes against 1 (full MNIST epochs; the last of 3 is timed)
if [ "$N" -ge 2 ]; then
    python benchmarks/ddp_speed.py --device cuda --nproc "$N" --threads 4 --subset 60000 --val-size 5000 \
        --epochs 3 --out ddp_speed_gpu.json
fi
