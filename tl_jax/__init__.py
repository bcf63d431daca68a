"""tl_jax: transfer learning of ImageNet CNNs in JAX/Flax.

``create(arch, source, ...)`` builds a Flax port, ``available()`` lists the (arch, source)
pairs, ``load_pretrained(dir, num_classes)`` reads converted weights with a new head and
``save_pretrained(dir, variables, metadata)`` writes them, ``export_weights(dir, to, file)`` writes them
back in torchvision's or Keras' layout.
"""
from tl_jax.models import available, create
from tl_jax.weights.export import export_weights
from tl_jax.weights.store import load_pretrained, save_pretrained

__all__ = ["available", "create", "export_weights", "load_pretrained", "save_pretrained"]
