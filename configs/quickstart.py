"""The offline quickstart (scripts/quickstart.py): scikit-learn digits as a tiny transfer-learning lab.

  configs/quickstart.py:pretrain   ResNet-18 (torchvision layout) from scratch on digits 0-4
  configs/quickstart.py            fine-tune on digits 5-9 with 10 labels per class; evaluated on
                                   every other 5-9 digit. ``weights`` is set by the quickstart to
                                   the pretrained store it writes.

Images are the 8x8 digits upsampled to 32x32 RGB; everything runs in float32 on the CPU.
"""
from configs import default


def get_config(stage: str = "finetune"):
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    c = default.get_config()
    c.weights = ""
    c.model.arch, c.model.source, c.model.dtype = "resnet18", "torchvision", "float32"
    c.data.source = "digits"
    c.data.image_size = c.data.resize_size = 32   # eval: the 32x32 image as is
    c.data.min_crop_area = 0.35
    c.model.head_init = "zeros"
    c.optim.name = "adamw"
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.log_every_steps = 5
    c.eval_every_epochs = 0            # evaluate once, at the end
    c.keep_checkpoints = 1
    c.parallel = "none"
    if stage == "pretrain":
        c.data.classes = (0, 1, 2, 3, 4)
        c.data.train_split, c.data.eval_split = "train", "test"   # 721 / 180 images
        c.optim.learning_rate = 2e-3
        c.batch_size = 32
        c.num_steps = 100
    else:
        c.data.classes = (5, 6, 7, 8, 9)
        c.data.labels_per_class = 10                  # 50 labelled images, drawn from the first 10%
        c.data.train_split, c.data.eval_split = "all[:10%]", "all[10%:]"   # eval: the other 806
        c.optim.learning_rate = 1e-3
        c.batch_size = 25
        c.num_steps = 40
    c.checkpoint_every_steps = c.num_steps            # one checkpoint, at the end
    return c
