"""tl_jax: transfer learning of ImageNet CNNs in JAX/Flax."""
from tl_jax.models import available, create

create_model = create

__all__ = ["available", "create", "create_model"]
