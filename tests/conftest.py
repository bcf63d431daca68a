"""Test-session setup shared by every test file."""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

try:
    # torchvision (through triton) segfaults when imported after TensorFlow in one process: load it first.
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError:  # the torch extra is optional
    pass
