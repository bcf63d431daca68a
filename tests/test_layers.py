"""layers.conv on a 1x1 map: the matrix product of the one kernel tap that meets the input, same results."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.models import layers

CASES = [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), (7, 2, 3)]  # ResNet's convolutions: kernel, stride, padding


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("kernel,stride,padding", CASES)
def test_conv_equals_flax_conv_with_gradients(kernel, stride, padding, size):
    x = jax.random.normal(jax.random.PRNGKey(0), (4, size, size, 5))
    ours = layers.conv(8, kernel, stride, padding, use_bias=True)
    reference = nn.Conv(8, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2,
                        use_bias=True)
    variables = reference.init(jax.random.PRNGKey(1), x)

    def loss(v, x, module):
        return jnp.sum(jnp.sin(module.apply(v, x)))

    for got, want in zip(jax.tree.leaves((ours.apply(variables, x), jax.grad(loss, (0, 1))(variables, x, ours))),
                         jax.tree.leaves((reference.apply(variables, x),
                                          jax.grad(loss, (0, 1))(variables, x, reference)))):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    kernel_grad = jax.grad(loss)(variables, x, ours)["params"]["kernel"]
    assert kernel_grad.shape == (kernel, kernel, 5, 8)


def test_a_1x1_map_compiles_to_a_product_and_larger_maps_to_a_convolution():
    module = layers.conv(8, 3, 1, 1)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((2, 4, 4, 3)))

    def hlo(size):
        x = jnp.zeros((2, size, size, 3))
        return jax.jit(jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 2))).lower(variables).as_text()

    assert "convolution" not in hlo(1)
    assert "convolution" in hlo(2)
