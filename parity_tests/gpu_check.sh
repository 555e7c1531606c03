#!/usr/bin/env bash
# The checks that need a CUDA device, in one go, on a machine that has one:
#   1. every test marked `gpu` (NumPy vs the twin on CUDA, the built-ins' CUDA kernels, the twin's
#      SDPA dispatch on CUDA, the flash case in the CUDA parity run);
#   2. the GPU benchmark: the twin's training step (attention through F.scaled_dot_product_attention)
#      against torch.nn.Transformer's at d 512, 8 heads, 6 + 6 layers, batch 64 x 128, in float32
#      and bfloat16, printing the ratio (the issue asks for at most 1.1).
# Usage: parity_tests/gpu_check.sh [benchmark steps, default 20]
# Exits 2 without a CUDA device, else with the first failing step's status.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-20}"

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device here (torch.cuda.is_available() is False)" >&2
    exit 2
fi
python -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

echo "== the gpu-marked tests"
python -m pytest -q -p no:cacheprovider -m gpu parity_tests/test_gpu.py parity_tests/test_decoding.py \
    parity_tests/test_twin_numpy_inputs.py

echo "== the GPU benchmark"
python -m numpy_transformer benchmark --device cuda --steps "$STEPS" --warmup 5
