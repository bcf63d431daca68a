"""Offline quickstart: pretrain on printed glyphs, save as pretrained weights, transfer to handwritten digits.

  python scripts/quickstart.py                          # one seed, about 4 minutes on a 2-core CPU
  python scripts/quickstart.py --seeds=0,1,2            # mean and spread over three seeds

1. Pretrains a ResNet-18 (torchvision layout) from scratch on 18,000 printed characters (62 classes,
   21 typefaces, coarsened to 8x8 like the digits), configs/quickstart.py:pretrain; cached in WORKDIR.
2. Saves it with save_pretrained: the format scripts/convert_weights.py writes for ImageNet weights.
3. Fine-tunes on scikit-learn's handwritten digits with 1, 3 and 10 labels per class at every frozen
   depth, as a linear probe on cached features, and from scratch with the same budget; each is
   evaluated on the same 1,438 held-out digits.
4. Probes every stage with a closed-form ridge classifier and compares its ranking with the ablation.
5. Prints the table and writes WORKDIR/summary.json, transfer_curve.png and frozen_depth.png.

Re-running skips whatever is finished.
"""
import os

from absl import flags

from tl_jax.experiment import cli, quickstart

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "quickstart.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "where everything goes (re-running resumes)")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "fine-tuning seeds (they also draw the labelled digits), e.g. 0,1,2")
_SHOTS = flags.DEFINE_list("labels_per_class", ["1", "3", "10"], "labelled digits per class, e.g. 1,3,10")
_PROGRESS = flags.DEFINE_enum("progress", "off", ["auto", "on", "off"], "progress bars (auto: on a terminal)")


def main(argv: list[str]) -> None:
    summary = quickstart.run_quickstart(CONFIG, _WORKDIR.value, seeds=cli.int_list(_SEEDS.value, "--seeds"),
                                        shots=cli.int_list(_SHOTS.value, "--labels_per_class"),
                                        progress={"auto": None, "on": True, "off": False}[_PROGRESS.value],
                                        log=lambda m: print(m, flush=True))
    print()
    print(quickstart.format_table(summary))
    print()
    for s in summary["probe"]["settings"]:
        print(f"stage probe, {s['labels_per_class']} per class: its best stage means frozen depth {s['probe_best_depth']}"
              f" (ablation's best: {s['ablation_best_depth']}), Spearman rank correlation with the ablation over "
              f"depths 1-{len(s['probe_top1'])}: {s['spearman']:.2f}")
    print(f"\nwrote {os.path.join(os.path.abspath(_WORKDIR.value), 'summary.json')}, transfer_curve.png, "
          f"frozen_depth.png; total {summary['wall_s']:.0f} s")


if __name__ == "__main__":
    cli.run(main)
