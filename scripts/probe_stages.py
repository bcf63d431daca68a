"""Which stage's features are good enough to freeze up to? A ridge probe on every stage, in seconds.

  python scripts/probe_stages.py --weights weights/resnet50_tv --data tfds:tf_flowers \
      --train_split 'train[:80%]' --eval_split 'train[80%:]' --shots 1,5,10 --seeds 0,1,2 --output runs/probe
  python scripts/probe_stages.py --weights runs/quickstart/pretrained_resnet18_glyphs --data digits \
      --train_split 'all[:20%]' --eval_split 'all[20%:]' --image_size 8 --output runs/probe_digits

The frozen backbone runs once over both splits (features cached in --output); every stage's output
is global-average-pooled and a closed-form ridge classifier is fitted on SHOTS labelled examples per
class drawn from --train_split (regulariser by leave-one-out on them), then scored on --eval_split.
Prints top-1 per stage and shot count; writes OUTPUT/probe.json and OUTPUT/probe.png.
"""
import os

from absl import flags

from tl_jax.experiment import cli, stage_probe

_WEIGHTS = flags.DEFINE_string("weights", None, "a converted or save_pretrained weights directory")
_DATA = flags.DEFINE_string("data", None, "anything make_dataset reads: digits, folder:PATH, tfds:NAME")
_TRAIN = flags.DEFINE_string("train_split", "train", "where the labelled examples are drawn from")
_EVAL = flags.DEFINE_string("eval_split", "test", "what the probes are scored on")
_SHOTS = flags.DEFINE_list("shots", ["1", "5", "10"], "labelled examples per class; 'all' for the whole split")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds drawing the labelled examples")
_SIZE = flags.DEFINE_integer("image_size", None, "input size (default: the weights' own)")
_OUTPUT = flags.DEFINE_string("output", None, "where probe.json, probe.png and the feature cache go")
flags.mark_flags_as_required(["weights", "data", "output"])


def main(argv: list[str]) -> None:
    shots = [None if s == "all" else s for s in _SHOTS.value]
    report = stage_probe.probe_stages(_WEIGHTS.value, _DATA.value, train_split=_TRAIN.value, eval_split=_EVAL.value,
                                      shots=[None if s is None else cli.int_list([s], "--shots")[0] for s in shots],
                                      seeds=cli.int_list(_SEEDS.value, "--seeds"), image_size=_SIZE.value,
                                      output=_OUTPUT.value)
    print(stage_probe.format_table(report))
    print(f"backbone pass {report['extract_s']:.1f} s (0: cached), probes {report['probe_s']:.1f} s; wrote "
          f"{os.path.join(_OUTPUT.value, 'probe.json')} and probe.png")


if __name__ == "__main__":
    cli.run(main)
