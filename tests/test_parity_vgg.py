"""VGG ports against the real torchvision / Keras models, converted from their weight files.

Each model is built once (random weights, randomised BatchNorm statistics), written
in its source's file format, converted by the strict name map, and checked in eval
mode on random float32 inputs:
  * logits at 224 and the pre-logit features (torchvision ``classifier[:5]``, i.e.
    fc7 after ReLU; Keras ``fc2``);
  * torchvision at a second size (logits), which exercises ``AdaptiveAvgPool2d(7)``:
    100 (block5 is 3x3, pooled up to 7x7, and 25 -> 12 floors in a max-pool) and,
    for vgg11 only (the cheapest), 256 (8x8 pooled down to 7x7 with overlapping bins).
    The pooling and the classifier are one code path for every depth, and a depth
    differs only in its convolution stack, which 224 checks: the second sizes run on
    vgg11 and vgg11_bn (with and without BatchNorm), not on all eight;
  * Keras at 100: Keras VGG cannot run its top at another size, so the conv backbone
    is compared instead: ``keras.applications.VGG*(include_top=False)`` given the
    reference's conv weights (by layer name) against our ``block5`` output. Our fc
    weights at that size are zeros of the right shape; they cannot affect block5.
"""
from __future__ import annotations

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest
# Before anything loads TensorFlow (Keras does, lazily): importing torchvision (-> triton)
# after TensorFlow segfaults with these wheels.
import torch
import torchvision

from references import (assert_parity, keras_reference, logits_and_features, torch_logits_and_activation,
                        torchvision_reference)
from tl_jax.models import registry
from tl_jax.models.init import variables_template
from tl_jax.weights.convert import ConversionError
from tl_jax.weights.keras import convert_keras
from tl_jax.weights.torchvision import convert_torchvision

SIZE, OTHER = 224, 100
TORCHVISION_ARCHS = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
EXTRA_SIZES = {"vgg11": (OTHER, 256), "vgg11_bn": (OTHER,)}


def _inputs(size: int, seed: int, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.RandomState(seed).randn(2, size, size, 3)).astype(np.float32)


# Keras' "caffe" inputs are mean-subtracted pixels (about +-128), and its Glorot-initialised
# VGG is close to linear in the input: unit-scale inputs would give logits of about 0.01.
KERAS_SCALE = 64.0



@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_torchvision_vgg_parity(arch, tmp_path):
    path = tmp_path / f"{arch}.pth"
    ref = torchvision_reference(arch, str(path))
    variables = convert_torchvision(arch, path)
    path.unlink()  # VGG files are ~0.5 GB
    model = registry.create(arch, "torchvision")
    errors = {}
    for size in (SIZE, *EXTRA_SIZES.get(arch, ())):
        x = _inputs(size, seed=size)
        ref_logits, ref_feats = torch_logits_and_activation(ref, x, ref.classifier[4])
        logits, feats = logits_and_features(model, variables, x)
        errors[f"logits@{size}"] = assert_parity(logits, ref_logits, f"{arch} logits at {size}")
        if size == SIZE:
            errors["features"] = assert_parity(feats, ref_feats, f"{arch} fc7 features")
    print(f"\n{arch} torchvision max parity error: {errors}")


@pytest.mark.parametrize("arch,app", [("vgg16", "VGG16"), ("vgg19", "VGG19")])
def test_keras_vgg_parity(arch, app, tmp_path):
    import keras

    path = tmp_path / f"{arch}.h5"
    ref = keras_reference(app, str(path), SIZE)
    variables = convert_keras(arch, path)
    path.unlink()
    model = registry.create(arch, "keras")
    errors = {}

    x = _inputs(SIZE, seed=0, scale=KERAS_SCALE)
    both = keras.Model(ref.input, [ref.output, ref.get_layer("fc2").output])
    ref_logits, ref_feats = (np.asarray(a) for a in both(x, training=False))
    logits, feats = logits_and_features(model, variables, x)
    errors["logits@224"] = assert_parity(logits, ref_logits, f"keras {arch} logits")
    errors["features"] = assert_parity(feats, ref_feats, f"keras {arch} fc2 features")

    # Second size: the conv backbone only (see the module docstring).
    base = getattr(keras.applications, app)(include_top=False, weights=None, input_shape=(OTHER, OTHER, 3))
    for layer in base.layers:
        if layer.weights:
            layer.set_weights(ref.get_layer(layer.name).get_weights())
    x = _inputs(OTHER, seed=1, scale=KERAS_SCALE)
    ref_block5 = np.asarray(base(x, training=False))
    template = variables_template(model, OTHER)["params"]["classifier"]
    params = {**variables["params"],
              "classifier": jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)}
    _, state = model.apply({"params": params}, x, capture_intermediates=lambda m, _: m.name == "block5",
                           mutable=["intermediates"])
    block5 = np.asarray(state["intermediates"]["block5"]["__call__"][0])
    errors[f"block5@{OTHER}"] = assert_parity(block5, ref_block5, f"keras {arch} block5 at {OTHER}")
    print(f"\n{arch} keras max parity error: {errors}")


def test_vgg16_state_dict_into_vgg19_names_missing_keys():
    """A state_dict of the wrong depth fails before anything is built, naming what is missing."""
    with torch.device("meta"):  # the real key names and shapes, without allocating weights
        shapes = {k: tuple(v.shape) for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}
    state = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    with pytest.raises(ConversionError, match=r"missing \d+ target keys") as e:
        convert_torchvision("vgg19", state)
    # vgg19 has convs at features.16 (block3/conv4), 23, 25, 32, 34 where vgg16 has none.
    assert "params/block3/conv4/kernel" in str(e.value)
    assert "unexpected" in str(e.value) and "features.17.weight" in str(e.value)


def test_vgg_train_mode_follows_the_frozen_stages():
    """Frozen stages: BatchNorm on running averages, no dropout, no gradient; trainable ones move.

    A small VGG-11-BN with the Keras layout (its fc6 fits a 32x32 input) and dropout on.
    """
    from tl_jax.models.vgg import vgg

    x = _inputs(32, seed=3)
    labels = np.arange(2) % 3

    def make(frozen_depth=0):
        model = vgg(11, batch_norm=True, variant="keras", dropout_rate=0.5, num_classes=3)
        return model.clone(frozen_stages=model.stage_names[:frozen_depth])

    # Random variables from numpy: ``init`` (truncated normals for ~25M weights) takes seconds on CPU.
    rng = np.random.RandomState(0)
    fill = lambda path, s: (rng.uniform(0.5, 1.5, s.shape) if path[-1].key in ("scale", "var")  # noqa: E731
                            else rng.randn(*s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(s.dtype)
    variables = jax.tree_util.tree_map_with_path(fill, variables_template(make(), 32))
    stats = variables["batch_stats"]

    # Variables are arguments, not closed-over constants: 25M constants make XLA compile slowly.
    @functools.partial(jax.jit, static_argnums=0)
    def step(frozen_depth, variables, seed):
        """(logits, new batch_stats, gradients) of one training-mode forward and backward."""
        def loss(params):
            logits, state = make(frozen_depth).apply(
                {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                rngs={"dropout": jax.random.key(seed)}, mutable=["batch_stats"])
            return -jax.nn.log_softmax(logits)[np.arange(2), labels].mean(), (logits, state["batch_stats"])
        (_, (logits, new_stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return logits, new_stats, grads

    def zero_grad_stages(grads):
        return [s for s, t in grads.items() if all((np.asarray(g) == 0).all() for g in jax.tree.leaves(t))]

    # Everything below the head frozen: train mode is eval mode and no statistic moves.
    logits, new_stats, grads = step(6, variables, 1)
    np.testing.assert_allclose(logits, jax.jit(make().apply)(variables, x), rtol=1e-5, atol=1e-6)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), new_stats, stats))
    assert zero_grad_stages(grads) == ["block1", "block2", "block3", "block4", "block5", "classifier"]

    # block1..block3 frozen: their statistics stay, block4's move, dropout makes runs differ,
    # and the gradient is zero exactly for the frozen stages.
    logits, new_stats, grads = step(3, variables, 1)
    assert logits.dtype == np.float32
    assert (new_stats["block3"]["bn2"]["mean"] == stats["block3"]["bn2"]["mean"]).all()
    assert not (new_stats["block4"]["bn1"]["mean"] == stats["block4"]["bn1"]["mean"]).all()
    assert not np.allclose(logits, step(3, variables, 2)[0])
    assert zero_grad_stages(grads) == ["block1", "block2", "block3"]
