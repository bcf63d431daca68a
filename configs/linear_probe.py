"""Linear probe: every backbone stage frozen, only the head trains, on cached features (computed once).

  python scripts/train.py --config configs/linear_probe.py --workdir runs/probe
"""
from configs import default


def get_config():
    c = default.get_config()
    c.weights = "weights/resnet50_tv"
    c.data.source = "tfds:tf_flowers"
    c.freeze.frozen_depth = -1         # -1: all backbone stages (the head alone trains)
    c.optim.name = "adamw"
    c.optim.learning_rate = 1e-3
    c.optim.weight_decay = 0.0
    c.num_epochs = 30
    c.activation_cache = True          # backbone features computed once (tl_jax/experiment/activations.py)
    c.activation_cache_views = 4       # ... over 4 augmented epochs (random crop and flip)
    return c
