#!/usr/bin/env bash
# The GPU benchmark, one command (needs only jax/flax/optax + torch/torchvision on the machine):
#   bash benchmarks/gpu.sh [OUTDIR]
# ResNet-50 and VGG-16, batch 256, 224x224, bf16, at the issue's frozen depths, each beside the
# torchvision step timed in the same process. JSON lines per configuration go to OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
python3 scripts/benchmark.py --arch resnet50 --depths 0,4,5 --batch 256 --resolution 224 --dtype bfloat16 \
  --steps 20 --chunks 3 --peer torch --out "$out/resnet50.json"
python3 scripts/benchmark.py --arch vgg16 --depths 0,5 --batch 256 --resolution 224 --dtype bfloat16 \
  --steps 20 --chunks 3 --peer torch --out "$out/vgg16.json"
