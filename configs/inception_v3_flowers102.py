"""Inception-V3 (Keras ImageNet weights) on oxford_flowers102 (102 classes, 1,020 train images), top two blocks + head.

  python scripts/convert_weights.py --arch inception_v3 --source keras --output weights/inception_v3_keras
  python scripts/train.py --config configs/inception_v3_flowers102.py --workdir runs/flowers102
"""
from configs import default


def get_config():
    c = default.get_config()
    c.weights = "weights/inception_v3_keras"
    c.data.source = "tfds:oxford_flowers102"
    c.data.train_split, c.data.eval_split = "train+validation", "test"
    c.freeze.frozen_depth = 10         # stem..mixed7a frozen: mixed7b, mixed7c and the head train
    c.optim.learning_rate = 0.01
    c.batch_size = 32
    c.num_epochs = 20
    return c
