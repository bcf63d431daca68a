#!/usr/bin/env bash
# The GPU benchmark, one command (needs only jax/flax/optax/orbax/absl + torch/torchvision on the machine;
# no TensorFlow, tensorflow_datasets or ml_collections):
#   bash benchmarks/gpu.sh [OUTDIR]
# ResNet-50 (frozen depths 0,4,5) and VGG-16 (0,5), batch 256, 224x224, bf16 on both sides (the torch
# step under bf16 autocast), each depth beside the torchvision step timed in the same process.
# One JSON line per configuration on stdout; OUTDIR/<arch>.json gets the list.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/out}}
mkdir -p "$out"
# The scripts import tl_jax: from this checkout, whether or not it is pip-installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
python3 scripts/benchmark.py --arch resnet50 --depths 0,4,5 --batch 256 --resolution 224 --dtype bfloat16 \
  --steps 20 --chunks 3 --num_classes 1000 --peer torch --out "$out/resnet50.json"
python3 scripts/benchmark.py --arch vgg16 --depths 0,5 --batch 256 --resolution 224 --dtype bfloat16 \
  --steps 20 --chunks 3 --num_classes 1000 --peer torch --out "$out/vgg16.json"
