"""Offline quickstart: pretrain, save as "converted" weights, transfer at every frozen depth. No network.

  python scripts/quickstart.py                      # about 3 minutes on a 2-core CPU
  python scripts/quickstart.py --workdir runs/qs --seeds=0,1,2

1. Pretrains a ResNet-18 (torchvision layout) from scratch on scikit-learn digits 0-4
   (8x8 images upsampled to 32x32 RGB), configs/quickstart.py:pretrain.
2. Saves it with ``save_pretrained``: the same store format as scripts/convert_weights.py writes
   for ImageNet weights, so every later step treats it as published pretrained weights.
3. Fine-tunes on digits 5-9 with 10 labels per class at every frozen depth 0..5, from scratch
   with the same budget, and as a linear probe on cached features (configs/quickstart.py),
   then evaluates each on all 806 other 5-9 digits, with the frozen-depth ablation machinery
   (tl_jax/ablation.py, scripts/ablate_frozen_depth.py).
4. Prints the table and writes WORKDIR/transfer/ablation.{csv,json,png}.

Re-running skips whatever is finished.
"""
from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from tl_jax import experiment  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "where everything goes (re-running resumes)")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "fine-tuning seeds, e.g. 0,1,2 (mean and spread in the table)")
_PROGRESS = flags.DEFINE_enum("progress", "auto", ["auto", "on", "off"], "progress bars (auto: on a terminal)")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tl_jax import ablation

    t0 = time.time()
    progress = {"auto": None, "on": True, "off": False}[_PROGRESS.value]
    workdir = os.path.abspath(_WORKDIR.value)
    config_file = os.path.join(ROOT, "configs", "quickstart.py")

    print("1/3 pretraining ResNet-18 on digits 0-4 ...", flush=True)
    pre = experiment.train(experiment.load_config(config_file + ":pretrain"), os.path.join(workdir, "pretrain"),
                           progress=progress, echo=False)
    print(f"    held-out top-1 on digits 0-4: {100 * pre['final_eval_top1']:.1f}% "
          f"({pre['num_steps']} steps, {pre['wall_s']:.0f} s)", flush=True)

    store = os.path.join(workdir, "pretrained_resnet18_digits0-4")
    if not os.path.isdir(store):
        experiment.export(os.path.join(workdir, "pretrain"), store)
    print(f"2/3 saved as pretrained weights: {store}", flush=True)

    print("3/3 transfer to digits 5-9, 10 labels per class, at every frozen depth ...", flush=True)
    config = experiment.load_config(config_file, {"weights": store})
    rows, paths = ablation.ablate(config, os.path.join(workdir, "transfer"), depths="all",
                                  seeds=[int(s) for s in _SEEDS.value], scratch=True, probe_cache=True,
                                  title="digits 0-4 -> 5-9, 10 labels/class (ResNet-18, 32 px)",
                                  progress=progress, log=lambda m: print("   ", m, flush=True))
    print()
    print(ablation.format_table(rows))
    by = {r["variant"]: r for r in rows}
    slow, fast = by.get("depth5"), by.get("probe_cache")
    if slow and fast and slow["wall_s"] and fast["wall_s"]:
        print(f"\nlinear probe on cached features: {fast['wall_s']:.1f} s per run vs {slow['wall_s']:.1f} s "
              f"recomputing the frozen backbone every step ({slow['wall_s'] / fast['wall_s']:.1f}x, including "
              f"feature extraction and evaluation; the probe sees no augmentation)")
    print(f"\nwrote {', '.join(paths.values())}\ntotal {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    app.run(experiment.main_with_clean_errors(main), flags_parser=experiment.parse_flags)
