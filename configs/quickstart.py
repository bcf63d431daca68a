"""The offline quickstart (scripts/quickstart.py): a broad source task, a few-label target, every frozen depth.

  configs/quickstart.py:pretrain   ResNet-18 (torchvision layout) from scratch on 18,000 printed glyphs:
                                   62 characters in 21 typefaces, coarsened to 8x8 like the digits
                                   (tl_jax/data/glyphs.py); 2,000 more are its held-out test split
  configs/quickstart.py            fine-tune on scikit-learn's handwritten digits with ``labels_per_class``
                                   labels per digit, drawn from the first 20% of the digits; evaluated on
                                   the other 80% (1,438 images, the same for every setting)

Everything runs at the digits' own 8x8 resolution, in float32 on the CPU. The hyperparameters are
fixed here, chosen before any evaluation image was looked at and never tuned on them.
"""
from configs import default


def get_config(stage: str = "finetune"):
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    c = default.get_config()
    c.weights = ""
    c.model.arch, c.model.source, c.model.dtype = "resnet18", "torchvision", "float32"
    c.data.image_size = c.data.resize_size = 8    # the digits' own resolution: no resize
    c.data.min_crop_area = 1.0                    # no random crop: at 8x8 it would erase the strokes
    c.optim.name = "adamw"
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.eval_every_epochs = 0                       # evaluate once, at the end
    c.keep_checkpoints = 1
    c.parallel = "none"
    c.tensorboard = False
    if stage == "pretrain":
        c.data.source = "glyphs"
        c.data.train_split, c.data.eval_split = "train", "test"
        c.model.head_init = "lecun"
        c.optim.learning_rate = 2e-3
        c.optim.warmup_epochs = 0.15               # 11 steps
        c.batch_size = 256
        c.num_steps = 180
        c.log_every_steps = 25
        c.checkpoint_every_steps = 50
    else:
        c.data.source = "digits"
        c.data.labels_per_class = 10                  # the quickstart sets 1, 3 and 10
        c.data.train_split, c.data.eval_split = "all[:20%]", "all[20%:]"
        c.model.head_init = "zeros"
        c.optim.learning_rate = 1e-3
        c.optim.head_only_learning_rate = 1e-2      # a linear head on fixed features takes larger steps
        c.optim.warmup_epochs = 0.0
        c.batch_size = 10
        c.eval_batch_size = 250
        c.num_steps = 40
        c.log_every_steps = 20
        c.checkpoint_every_steps = 0                  # short runs: a finished one is kept by its result.json
        c.activation_cache = True                     # no augmentation at 8x8: the frozen prefix runs once
    return c
