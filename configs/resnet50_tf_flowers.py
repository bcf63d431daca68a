"""ResNet-50 (torchvision ImageNet weights) on tf_flowers (5 classes, 3,670 images), layer4 + head trained.

  python scripts/convert_weights.py --arch resnet50 --source torchvision --output weights/resnet50_tv
  python scripts/train.py --config configs/resnet50_tf_flowers.py --workdir runs/flowers
"""
from configs import default


def get_config():
    c = default.get_config()
    c.weights = "weights/resnet50_tv"
    c.data.source = "tfds:tf_flowers"
    c.data.train_split, c.data.eval_split = "train[:90%]", "train[90%:]"
    c.freeze.frozen_depth = 4          # stem, layer1..layer3 frozen
    c.optim.learning_rate = 0.01
    c.num_epochs = 10
    return c
