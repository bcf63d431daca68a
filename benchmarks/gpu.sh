#!/usr/bin/env bash
# The GPU benchmark, one command (needs only jax/flax/optax/orbax/absl + torch/torchvision on the machine;
# no TensorFlow, tensorflow_datasets or ml_collections):
#   bash benchmarks/gpu.sh [OUTDIR]
# What it runs, batch 256, 224x224, bf16 on every side (the torch steps under bf16 autocast):
#   1. ResNet-50 (frozen depths 0,4,5) and VGG-16 (0,5), tl_jax with frozen BatchNorm folded (--fold_bn),
#      each depth beside the eager torchvision step and the same step under torch.compile, timed in the
#      same process (--peer torch,torch_compile): OUTDIR/resnet50.json, OUTDIR/vgg16.json.
#   2. ResNet-50 (0,4,5) again with --nofold_bn and no peers (they do not depend on folding; the
#      first run has them): OUTDIR/resnet50_nofold.json. VGG-16 has no BatchNorm: nothing to unfold.
# About 6 minutes on an H200, most of it torch.compile compiling (20-60 s per depth and model).
# One JSON line per configuration on stdout.
# Sizes can be replaced for a dry run (e.g. on CPU): BATCH, RESOLUTION, STEPS, CHUNKS, DTYPE, PEERS.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/out}}
mkdir -p "$out"
# The scripts import tl_jax: from this checkout, whether or not it is pip-installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
common=(--batch "${BATCH:-256}" --resolution "${RESOLUTION:-224}" --dtype "${DTYPE:-bfloat16}"
        --steps "${STEPS:-20}" --chunks "${CHUNKS:-3}" --num_classes 1000)
peers=${PEERS-torch,torch_compile}
python3 scripts/benchmark.py --arch resnet50 --depths 0,4,5 "${common[@]}" --fold_bn --peer "$peers" \
  --out "$out/resnet50.json"
python3 scripts/benchmark.py --arch vgg16 --depths 0,5 "${common[@]}" --fold_bn --peer "$peers" \
  --out "$out/vgg16.json"
python3 scripts/benchmark.py --arch resnet50 --depths 0,4,5 "${common[@]}" --nofold_bn --peer "" \
  --out "$out/resnet50_nofold.json"
