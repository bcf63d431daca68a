"""Flax linen ports of torchvision and Keras ImageNet classifiers."""
from tl_jax.models.registry import ModelConfig, available, create, info

__all__ = ["ModelConfig", "available", "create", "info"]
