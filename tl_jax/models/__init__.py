"""Flax linen ports of torchvision and Keras ImageNet classifiers."""
from tl_jax.models.registry import ModelConfig, available, create, model_config

__all__ = ["ModelConfig", "available", "create", "model_config"]
