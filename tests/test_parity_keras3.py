"""Keras 3 ``.weights.h5`` / ``.keras`` files and Keras backbones under a user's head convert exactly.

References are ``keras.applications`` models with random weights and randomised BatchNorm statistics,
saved in both Keras 3 formats (which must convert to identical variables), converted through
``importer.convert_weights`` (the backbone case also through the script) and compared with Keras'
own outputs in float32 inference mode, at two input sizes where the model allows it (1e-4 bar).
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

import references as R
from tl_jax import load_pretrained
from tl_jax.weights import importer
from tl_jax.weights.keras import convert_keras, convert_keras_backbone

ROOT = Path(__file__).resolve().parents[1]


batch, ours, check, cli = R.source_batch, R.port_outputs, R.check_parity, R.convert_cli


# ------------------------------------------------------------------------------------------------ Keras 3

def keras_app(app: str, seed: int, size: int, **kwargs):
    """``keras.applications.<app>(weights=None)`` with logits out and random BN statistics."""
    import keras

    keras.utils.set_random_seed(seed)
    kwargs.setdefault("classifier_activation", None)
    model = getattr(keras.applications, app)(weights=None, input_shape=(size, size, 3), **kwargs)
    R.randomize_keras_bn(model, seed)
    return model


def free_size(model):
    """The same graph and weights with a free spatial size (the application fixes its input when it has a top)."""
    import keras

    config = model.get_config()
    config["layers"][0]["config"]["batch_shape"] = (None, None, None, 3)
    free = keras.Model.from_config(config)
    free.set_weights(model.get_weights())
    return free


def convert_both_formats(model, arch, tmp_path, backbone_only=False):
    """Save ``.weights.h5`` and ``.keras``, convert both: they must give the same variables. The first goes
    through ``importer.convert_weights`` into a store; the second through the same reader and table
    without writing a second store (the backbone case converts the ``.keras`` through the script too)."""
    model.save_weights(tmp_path / "model.weights.h5")
    model.save(tmp_path / "model.keras")
    out = tmp_path / "store"
    summary = importer.convert_weights(arch, "keras", out, tmp_path / "model.weights.h5", backbone_only=backbone_only)
    loaded = load_pretrained(out)
    other = (convert_keras_backbone(arch, tmp_path / "model.keras")[0] if backbone_only
             else convert_keras(arch, tmp_path / "model.keras"))
    assert R.same_tree(dict(loaded[1]), dict(other))
    return loaded, summary


@pytest.mark.parametrize("app,arch,sizes,classes", [("ResNet50", "resnet50", (224, 160), 1000),
                                                    ("InceptionV3", "inception_v3", (299, 160), 7)])
def test_keras3_parity(app, arch, sizes, classes, photos, tmp_path):
    import keras

    model = keras_app(app, seed=classes, size=sizes[0], classes=classes)
    free = free_size(model)
    (flax_model, variables, meta), _ = convert_both_formats(model, arch, tmp_path)
    assert meta["num_classes"] == classes
    pool = "avg_pool"
    both = keras.Model(free.input, [free.output, free.get_layer(pool).output])
    refs, outs = {}, {}
    for size in sizes:
        x = batch(photos, meta["preprocessing"], size)
        refs[size] = R.keras_outputs(both, x)
        outs[size] = ours(flax_model, variables, x)
    check(f"keras 3 {app}", refs, outs)


def test_keras3_vgg16_with_top_and_as_a_backbone(photos, tmp_path):
    """VGG16 with its top (224 only: fc1 fixes the input), then include_top=False under the user's own head."""
    import keras

    model = keras_app("VGG16", seed=16, size=224, classes=7)
    (tmp_path / "top").mkdir()
    (flax_model, variables, meta), _ = convert_both_formats(model, "vgg16", tmp_path / "top")
    x = batch(photos, meta["preprocessing"], 224)
    fc2 = keras.Model(model.input, [model.output, model.get_layer("fc2").output])
    check("keras 3 VGG16 top", {224: R.keras_outputs(fc2, x)}, {224: ours(flax_model, variables, x)})

    keras.utils.set_random_seed(3)
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    user = keras.Sequential([base, keras.layers.GlobalAveragePooling2D(name="gap"),
                             keras.layers.Dense(7, name="my_head")])
    (tmp_path / "bb").mkdir()
    (flax_model, variables, meta), summary = convert_both_formats(user, "vgg16", tmp_path / "bb", backbone_only=True)
    assert summary["ignored"] == ["my_head"] and meta["num_classes"] is None
    stdout = cli("--arch", "vgg16", "--source", "keras", "--input", str(tmp_path / "bb" / "model.keras"),
                 "--backbone_only", "--output", str(tmp_path / "bb" / "cli"))
    assert "ignored 1 layers outside the vgg16 backbone: my_head" in stdout and "(keras imagenet, no head)" in stdout
    assert meta["stage_names"] == ["block1", "block2", "block3", "block4", "block5", "head"]
    refs, outs = {}, {}
    for size in (224, 160):
        x = batch(photos, meta["preprocessing"], size)
        ref = R.keras_outputs(base, x)[0]
        refs[size] = (ref[:, :4, :4].reshape(2, -1), ref.mean(axis=(1, 2)))
        stages = flax_model.apply(variables, x, return_stages=True)
        outs[size] = (np.asarray(stages["block5"])[:, :4, :4].reshape(2, -1),
                      np.asarray(flax_model.apply(variables, x, return_features=True)))
    check("keras 3 VGG16 backbone (block5, pooled)", refs, outs)
    # The backbone store takes a new head like any other.
    head_model, head_vars, _ = load_pretrained(tmp_path / "bb" / "cli", num_classes=5)
    assert head_model.apply(head_vars, x).shape == (2, 5)


def test_keras_legacy_vgg16_notop_converts(photos, tmp_path):
    """The published ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` layout: conv blocks only."""
    model = R.keras_reference("VGG16", str(tmp_path / "notop.h5"), 224, seed=1, include_top=False)
    summary = importer.convert_weights("vgg16", "keras", tmp_path / "out", tmp_path / "notop.h5")
    assert summary["num_classes"] is None
    flax_model, variables, _ = load_pretrained(tmp_path / "out")
    x = batch(photos, "caffe", 224)
    ref = R.keras_outputs(model, x)[0]
    err = R.parity_error(np.asarray(flax_model.apply(variables, x, return_stages=True)["block5"]), ref)
    assert err <= R.PARITY_TOL, err
