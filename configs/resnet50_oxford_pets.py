"""ResNet-50 (torchvision) on oxford_iiit_pet (37 classes, 3,680 train images): full fine-tune, lower LR for early stages.

  python scripts/train.py --config configs/resnet50_oxford_pets.py --workdir runs/pets
"""
from configs import default


def get_config():
    c = default.get_config()
    c.weights = "weights/resnet50_tv"
    c.data.source = "tfds:oxford_iiit_pet"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.freeze.frozen_depth = 1          # stem frozen
    c.freeze.lr_mults = (("layer[12]/.*", 0.1), ("layer3/.*", 0.3))
    c.optim.learning_rate = 0.02
    c.label_smoothing = 0.1
    c.num_epochs = 15
    return c
