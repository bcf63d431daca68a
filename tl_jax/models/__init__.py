"""Flax linen ports of torchvision and Keras ImageNet classifiers."""
from tl_jax.models.registry import ModelInfo, available, create, info

__all__ = ["ModelInfo", "available", "create", "info"]
