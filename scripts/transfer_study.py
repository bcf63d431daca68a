"""Transferability studies offline, one command each (tl_jax/experiment/transfer_study.py, configs/transfer_study.py).

  python scripts/transfer_study.py --study yosinski --workdir runs/yosinski [--seeds 0,1,2]
  python scripts/transfer_study.py --study surgical --workdir runs/surgical [--seeds 0,1,2]

yosinski: Yosinski et al. (NIPS 2014) Figure 2 on two disjoint halves A and B of the 62 glyph classes
(32 px, ResNet-18): baseA and baseB from scratch, then for n = 1..5 copied stages BnB, BnB+, AnB, AnB+
trained on B. surgical: Lee et al. (ICLR 2023): the glyph-pretrained network fine-tuned on an
input-level shift (inverted ink) and an output-level shift (permuted labels), one trainable stage at a
time, everything, and LP-FT. Writes WORKDIR/study.json, study.csv, study.png and prints the table;
re-running skips finished runs and resumes interrupted ones. --steps shortens every run (a smaller,
different study: its results are not the README's).
"""
import os

from absl import flags

from tl_jax.experiment import cli, transfer_study

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "transfer_study.py")
_STUDY = flags.DEFINE_enum("study", None, list(transfer_study.STUDIES), "which study")
_WORKDIR = flags.DEFINE_string("workdir", None, "where its runs and outputs go (re-running resumes)")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds (each: the networks' initialisation and the data order)")
_STEPS = flags.DEFINE_integer("steps", None, "optimizer steps of every run instead of the config's", lower_bound=1)
_PROGRESS = flags.DEFINE_enum("progress", "off", ["auto", "on", "off"], "progress bars (auto: on a terminal)")
flags.mark_flags_as_required(["study", "workdir"])


def main(argv: list[str]) -> None:
    study = getattr(transfer_study, _STUDY.value)
    summary = study(CONFIG, _WORKDIR.value, seeds=cli.int_list(_SEEDS.value, "--seeds"),
                    overrides={"num_steps": _STEPS.value} if _STEPS.value else None,
                    progress={"auto": None, "on": True, "off": False}[_PROGRESS.value],
                    log=lambda m: print(m, flush=True))
    print()
    print(transfer_study.format_table(summary))
    print(f"\nwrote {os.path.join(os.path.abspath(_WORKDIR.value), 'study.json')}, study.csv, study.png; "
          f"{summary['wall_s']:.0f} s")


if __name__ == "__main__":
    cli.run(main)
