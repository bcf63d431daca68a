"""Inception-V3 ports against the real torchvision / Keras models, converted from their weight files.

Each reference has random weights and randomised BatchNorm statistics, is written in
its source's file format, converted by the strict name map, and compared in eval
mode on random float32 inputs (batch 2):
  * torchvision with ``transform_input`` True (the published weights' setting) and
    False, each built the same way on both sides: logits and pre-logit features (the
    input of ``fc``) at 299, and for True also at 160;
  * Keras: logits at 299 from the reference's file; then a second Keras model built
    in the same session (so its layers are numbered from ``conv2d_94``) that loads the
    first one's ``.h5`` at 160 is itself saved and converted: logits and features
    (its ``avg_pool`` output) at 160; a third, ``include_top=False, pooling="avg"``
    (the layout of the official ``_notop`` file), converts into a headless model.
"""
from __future__ import annotations

import math
import os
import random

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest

from references import (PARITY_TOL, assert_parity, keras_reference, logits_and_features, parity_error, save_keras_h5,
                        torch_logits_and_activation, torchvision_reference)
from tl_jax.models import registry
from tl_jax.models.init import variables_template
from tl_jax.weights.convert import ConversionError
from tl_jax.weights.keras import convert_keras, read_h5_weights
from tl_jax.weights.maps import inception as inception_map
from tl_jax.weights.torchvision import convert_torchvision

SIZE, OTHER = 299, 160


def _inputs(size: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).uniform(-1.0, 1.0, (2, size, size, 3)).astype(np.float32)


def _torchvision_inception(path: str, transform_input: bool):
    """The torchvision reference, with conv weights drawn N(0, 2/fan_in) and saved again.

    torchvision's own init (std 0.1 for every conv) with BatchNorm on random running
    statistics grows activations about 3x per layer (logits near 1e12, where early
    errors vanish relative to the output); std 1/sqrt(fan_in) halves the signal at
    each ReLU until the BatchNorm shifts dominate and the output barely depends on
    the input. He scaling keeps both the logits and their input dependence of order 1.
    """
    import torch

    ref = torchvision_reference("inception_v3", path, transform_input=transform_input, init_weights=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / m.weight[0].numel()))
    torch.save(ref.state_dict(), path)
    return ref



@pytest.mark.parametrize("transform_input", [True, False], ids=["transform_input", "no_transform"])
def test_torchvision_inception_parity(transform_input, tmp_path):
    path = str(tmp_path / "inception_v3.pth")
    ref = _torchvision_inception(path, transform_input)
    assert any(k.startswith("AuxLogits.") for k in ref.state_dict())  # dropped on purpose by the map
    variables = convert_torchvision("inception_v3", path)
    model = registry.create("inception_v3", "torchvision", transform_input=transform_input)
    x = np.random.RandomState(0).randn(2, SIZE, SIZE, 3).astype(np.float32)
    logits, feats = logits_and_features(model, variables, x)
    ref_logits, ref_feats = torch_logits_and_activation(ref, x, ref.fc, entering=True)
    assert feats.shape == (2, 2048) and feats.dtype == np.float32
    assert_parity(logits, ref_logits, f"logits at {SIZE}")
    assert_parity(feats, ref_feats, f"features at {SIZE}")
    if not transform_input:
        return  # the settings differ in the first op only: one second size suffices
    x = np.random.RandomState(1).randn(2, OTHER, OTHER, 3).astype(np.float32)
    logits, feats = logits_and_features(model, variables, x)
    ref_logits, ref_feats = torch_logits_and_activation(ref, x, ref.fc, entering=True)
    assert_parity(logits, ref_logits, f"logits at {OTHER}")
    assert_parity(feats, ref_feats, f"features at {OTHER}")
    # Guards the comparison: the flag must matter, or both sides could be ignoring it.
    flipped = registry.create("inception_v3", "torchvision", transform_input=False)
    flipped_feats = jax.jit(lambda v, x: flipped.apply(v, x, return_features=True))(variables, x)
    assert parity_error(np.asarray(flipped_feats), ref_feats) > 100 * PARITY_TOL


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """Three Keras InceptionV3 models built in one session, each saved as legacy HDF5."""
    import keras

    d = tmp_path_factory.mktemp("keras_inception")
    first = keras_reference("InceptionV3", str(d / "first.h5"), SIZE)
    # Built after the first, so Keras numbers its layers on from the first's (conv2d_94.. in a fresh
    # session); it loads the first's weights from its file.
    second = keras.applications.InceptionV3(weights=str(d / "first.h5"), input_shape=(OTHER, OTHER, 3),
                                            classifier_activation=None)
    save_keras_h5(second, str(d / "second.h5"))
    notop = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                           input_shape=(OTHER, OTHER, 3))
    notop.set_weights(first.get_weights()[:-2])  # all but the predictions kernel and bias
    save_keras_h5(notop, str(d / "notop.h5"))
    return {"first": (first, d / "first.h5"), "second": (second, d / "second.h5"),
            "notop": (notop, d / "notop.h5")}


def _conv_layer_names(path) -> list[str]:
    return sorted({name.split("/")[0] for name in read_h5_weights(path) if name.startswith("conv2d")})


def test_keras_inception_parity(keras_files):
    model = registry.create("inception_v3", "keras")
    assert model.dropout_rate == 0.0 and not model.transform_input
    ref, path = keras_files["first"]
    variables = convert_keras("inception_v3", path)
    x = _inputs(SIZE, 0)
    assert_parity(logits_and_features(model, variables, x)[0], np.asarray(ref.predict_on_batch(x)), f"logits at {SIZE}")

    second, second_path = keras_files["second"]
    names = _conv_layer_names(second_path)
    assert len(names) == 94 and not set(names) & set(_conv_layer_names(path)), names[:3]
    second_vars = convert_keras("inception_v3", second_path)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(second_vars)):
        np.testing.assert_array_equal(a, b)
    x = _inputs(OTHER, 1)
    logits, feats = logits_and_features(model, second_vars, x)
    import keras

    ref_feats = keras.Model(second.input, second.get_layer("avg_pool").output).predict_on_batch(x)
    assert_parity(logits, np.asarray(second.predict_on_batch(x)), f"logits at {OTHER}")
    assert_parity(feats, np.asarray(ref_feats), f"features at {OTHER}")


def test_keras_notop_file_converts_headless(keras_files):
    notop, path = keras_files["notop"]
    model = registry.create("inception_v3", "keras", num_classes=None)
    variables = convert_keras("inception_v3", path, model=model)
    assert "head" not in variables["params"]
    x = _inputs(OTHER, 2)
    feats = np.asarray(jax.jit(model.apply)(variables, x))
    assert_parity(feats, np.asarray(notop.predict_on_batch(x)), f"notop features at {OTHER}")


def _synthetic_keras_weights(first: int) -> dict[str, np.ndarray]:
    """Auto-named layers numbered from ``first`` (value = creation rank), in shuffled order."""
    names = []
    for k in range(len(inception_map.KERAS_CREATION_ORDER)):
        n = first + k
        conv, bn = (f"conv2d_{n}", f"batch_normalization_{n}") if n else ("conv2d", "batch_normalization")
        names += [(f"{conv}/kernel", k), (f"{bn}/beta", k)]
    random.Random(0).shuffle(names)
    return {name: np.full((1,), k) for name, k in names + [("predictions/kernel", -1)]}


@pytest.mark.parametrize("first", [0, 1, 94], ids=["keras3", "official_file", "second_model"])
def test_keras_names_map_by_creation_rank(first):
    """Rank by numeric suffix (conv2d_10 after conv2d_9), never by file position."""
    canonical = inception_map.keras_canonical_names(_synthetic_keras_weights(first))
    for k, path in enumerate(inception_map.KERAS_CREATION_ORDER):
        assert canonical[f"{path}/conv/kernel"][0] == k and canonical[f"{path}/bn/beta"][0] == k
    assert canonical["head/kernel"][0] == -1
    assert inception_map.KERAS_CREATION_ORDER[:2] == ("stem/Conv2d_1a_3x3", "stem/Conv2d_2a_3x3")
    assert inception_map.KERAS_CREATION_ORDER[-1] == "mixed7c/branch_pool"


def test_keras_wrong_layer_count_raises():
    weights = _synthetic_keras_weights(1)
    del weights["conv2d_50/kernel"]
    with pytest.raises(ConversionError, match="94 auto-named conv layers"):
        inception_map.keras_canonical_names(weights)


def test_keras_variant_refuses_transform_input():
    with pytest.raises(ValueError, match="transform_input"):
        registry.create("inception_v3", "keras", transform_input=True)


def test_train_mode_conventions():
    """Frozen stages keep their BatchNorm statistics; dropout (torchvision 0.5) acts in train mode only."""
    model = registry.create("inception_v3", "torchvision", num_classes=3,
                            frozen_stages=registry.model_config("inception_v3", "torchvision").stage_names[:6])
    x = _inputs(75, 3)  # torchvision's minimum size
    # Random variables of the model's shapes: model.init would compile every initializer (slow).
    rng = np.random.RandomState(0)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, t: (rng.uniform(0.5, 1.5, t.shape) if p[-1].key in ("var", "scale")
                      else rng.randn(*t.shape) * math.sqrt(2.0 / math.prod(t.shape[:-1]))
                      if p[-1].key == "kernel" else rng.uniform(-0.1, 0.1, t.shape)).astype(np.float32),
        variables_template(model, 75))

    @jax.jit
    def train(v, x, key):
        return model.apply(v, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])

    (a, new), (b, _) = train(variables, x, jax.random.key(1)), train(variables, x, jax.random.key(2))
    assert np.abs(a).max() > 0.05 and not np.allclose(a, b)  # dropout masks differ
    stages = model.stage_names
    assert set(variables["params"]) == set(stages)  # every parameter path starts with its stage
    for i, stage in enumerate(stages[:-1]):
        same = jax.tree.all(jax.tree.map(np.array_equal, variables["batch_stats"][stage],
                                         dict(new["batch_stats"][stage])))
        assert same == (i < 6), stage
