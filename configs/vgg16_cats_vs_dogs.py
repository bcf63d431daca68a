"""The classic tutorial task: VGG-16 (Keras ImageNet weights) on cats_vs_dogs, conv blocks frozen.

  python scripts/convert_weights.py --arch vgg16 --source keras --output weights/vgg16_keras
  python scripts/train.py --config configs/vgg16_cats_vs_dogs.py --workdir runs/cats_vs_dogs
"""
from configs import default


def get_config():
    c = default.get_config()
    c.weights = "weights/vgg16_keras"
    c.data.source = "tfds:cats_vs_dogs"
    c.data.train_split, c.data.eval_split = "train[:10%]", "train[90%:]"   # few labels: ~2,300 images
    c.data.skip_corrupt = True         # the dataset has a few undecodable JPEGs
    c.freeze.frozen_depth = 5          # block1..block5 frozen: fc6, fc7 and the head train
    c.optim.learning_rate = 0.001
    c.batch_size = 32
    c.num_epochs = 5
    return c
