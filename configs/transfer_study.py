"""The transferability studies (scripts/transfer_study.py): every hyperparameter, fixed before any result.

  configs/transfer_study.py:base       Yosinski et al. (NIPS 2014) on glyph halves: a ResNet-18 (torchvision
                                       layout) from scratch on one half A or B of the 62 glyph classes
  configs/transfer_study.py:transfer   ... its first n stages copied into a new network, the rest
                                       re-initialised (``freeze.reinit_from``), trained on B with the copied
                                       stages frozen (BnB, AnB) or fine-tuned (BnB+, AnB+): same steps as a base
  configs/transfer_study.py:pretrain   surgical fine-tuning (Lee et al., ICLR 2023): the quickstart's source
                                       network, ResNet-18 on all 62 glyph classes at 8x8
  configs/transfer_study.py:surgical   ... fine-tuned on shifted glyphs with one stage trainable at a time

Yosinski: glyphs rendered on a 32x32 grid (the ink fitted into 64x64, 2x2 blocks): at 32 px every stage
of ResNet-18 still sees a spatial map (stem and layer1 8x8, layer2 4x4, layer3 2x2; layer4 reads a 2x2
map and outputs 1x1), where at the quickstart's 8x8 layer2..layer4 see 1x1 maps. Training and
evaluation glyphs are disjoint renders (the glyphs' train and test splits). None of these values
was tuned on the evaluation glyphs.
"""
import ml_collections

from configs import default, quickstart

STAGES = ("base", "transfer", "pretrain", "surgical")


def get_config(stage: str = "base"):
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if stage == "pretrain":                       # the quickstart's source network: its config, not a copy
        return _with_study(quickstart.get_config("pretrain"))
    c = default.get_config()
    c.weights = ""
    c.model.arch, c.model.source, c.model.dtype = "resnet18", "torchvision", "float32"
    c.data.source = "glyphs"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.min_crop_area = 1.0                    # glyphs are made at their size: no random crop (nor flip)
    c.optim.name = "adamw"
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.eval_every_epochs = 0                       # evaluate once, at the end
    c.keep_checkpoints = 1
    c.parallel = "none"
    c.tensorboard = False
    c.activation_cache = False                    # the study turns it on where a prefix stays frozen (BnB, AnB,
                                                  # surgical stages above the stem): it runs once
    if stage in ("base", "transfer"):
        c.data.glyph_grid = 32
        c.data.image_size = c.data.resize_size = 32
        c.data.num_examples = 12_000              # 10,800 training glyphs (~174 per class), 1,200 held out
        c.optim.learning_rate = 2e-3
        c.optim.warmup_epochs = 0.1
        c.batch_size = 128
        c.eval_batch_size = 500
        c.num_steps = 40                          # ~0.95 epoch of a half: one seed in 20 minutes on 2 CPU cores
        c.log_every_steps = 20
        c.checkpoint_every_steps = 20
        c.model.head_init = "lecun"
    else:                                         # surgical: the target, a shifted copy of the source task
        c.data.image_size = c.data.resize_size = 8
        c.data.shift = "invert"                   # the study sets invert (input level) and permute_labels (output)
        c.data.labels_per_class = 10              # 620 labelled glyphs
        c.model.head_init = "lecun"
        c.optim.learning_rate = 1e-3
        c.optim.warmup_epochs = 0.0
        c.batch_size = 32
        c.eval_batch_size = 500
        c.num_steps = 120
        c.log_every_steps = 40
        c.checkpoint_every_steps = 0
    return _with_study(c)


def _with_study(c):
    """What the study itself varies (scripts/transfer_study.py), recorded with every run."""
    c.study = ml_collections.ConfigDict()
    c.study.split_seed = 0                        # Yosinski: the seeded shuffle that splits the 62 classes in halves
    c.study.copied_stages = (1, 2, 3, 4, 5)       # n: stem, stem+layer1, ..., stem..layer4 copied
    c.study.shifts = ("invert", "permute_labels")  # surgical: an input-level and an output-level shift
    c.study.variants = ("stem", "layer1", "layer2", "layer3", "layer4", "head", "all", "lp_ft")  # surgical: what trains
    c.study.lp_ft_learning_rates = (1e-2, 1e-3)   # surgical LP-FT: the head phase's peak, then the full phase's
    return c
