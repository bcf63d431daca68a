"""tl_jax: transfer learning of ImageNet CNNs in JAX/Flax."""
from tl_jax.models import available, create

create_model = create

__all__ = ["available", "create", "create_model", "load_pretrained"]


def __getattr__(name: str):
    # Lazy: the store pulls in orbax, which `import tl_jax` should not pay for.
    if name == "load_pretrained":
        from tl_jax.weights.store import load_pretrained
        return load_pretrained
    raise AttributeError(f"module 'tl_jax' has no attribute {name!r}")
