# Sourced by the GPU check scripts (gpu_check.sh, gpu_next.sh) after they set OUT: the Python to
# use ($PY, default python3), gencls from this checkout, everything printed also appended to
# $OUT/log, and which GPU, driver and torch the figures come from.
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
