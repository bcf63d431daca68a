"""Export to Keras 3: a converted ``keras.applications`` reference (random weights, randomised BatchNorm)
fine-tuned a few steps with frozen stages, written as ``.weights.h5``, loaded by the real Keras into
``keras.applications.X(weights=None, classes=N, classifier_activation=None)`` and compared in float32: every
stage's output (``return_stages`` against Keras' named layer outputs) and the logits to 1e-4 relative. The
unmodified conversion writes back the reference's weights exactly.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest

import references as R
from test_export import CLASSES, finetune
from tl_jax.models import registry
from tl_jax.models.init import variables_template
from tl_jax.weights import convert, export, export_keras, maps
from tl_jax.weights.keras import read_h5_weights

keras = pytest.importorskip("keras")


def stem_pool(model) -> str:
    """Inception's stem ends with its second max-pool (auto-named, so found by type and order)."""
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)][1]


def convert_at(arch: str, path: str, size: int, model) -> dict:
    """``convert_keras`` at the test's input size (Keras' VGG fc6 depends on it): the same table."""
    info = registry.model_config(arch, "keras")
    fam = maps.family(info.family)
    entries, unmatched = convert.apply_rules(fam.keras_canonical_names(read_h5_weights(path)), fam.keras_rules(info))
    return convert.assemble(variables_template(model, size), entries, unmatched)


# arch, input size, frozen depth, Keras layer whose output is each stage of ours (in forward order)
CASES = [
    ("vgg16", 32, 2, lambda m: [f"block{i}_pool" for i in range(1, 6)] + ["fc2", "predictions"]),
    ("resnet50", 32, 2, lambda m: ["pool1_pool", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                                   "conv5_block3_out", "predictions"]),
    ("inception_v3", 75, 1, lambda m: [stem_pool(m)] + [f"mixed{i}" for i in range(11)] + ["predictions"]),
]


@pytest.mark.parametrize("arch,size,frozen,stage_layers", CASES, ids=[c[0] for c in CASES])
def test_finetuned_export_loads_into_keras_applications(arch, size, frozen, stage_layers, tmp_path):
    app = export_keras.KERAS_APPS[arch]
    ref = R.keras_reference(app, str(tmp_path / "ref.h5"), size, classes=CLASSES)
    model = registry.create(arch, "keras", num_classes=CLASSES,
                            frozen_stages=registry.model_config(arch, "keras").stage_names[:frozen])
    variables = convert_at(arch, str(tmp_path / "ref.h5"), size, model)

    # Unmodified: Keras reads back the reference's own weights, bit for bit.
    export.export_variables(arch, "keras", variables, "keras", tmp_path / "same.weights.h5", metadata={})
    target = export_keras.build(arch, CLASSES, size)
    target.load_weights(str(tmp_path / "same.weights.h5"))
    expected = ref.get_weights()
    assert len(target.get_weights()) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(target.get_weights(), expected))

    # Input at the scale of the preprocessing ("caffe": pixels minus the mean; "tf": [-1, 1]).
    scale = 1.0 if arch == "inception_v3" else 120.0
    x = np.random.RandomState(1).uniform(-scale, scale, (4, size, size, 3)).astype(np.float32)
    tuned = finetune(model, variables, x)
    info = export.export_variables(arch, "keras", tuned, "keras", tmp_path / "tuned.weights.h5",
                                   metadata={"class_names": [f"c{i}" for i in range(CLASSES)]})
    assert info["framework_model"] == {"call": f"keras.applications.{app}", "kwargs": {
        "weights": None, "classes": CLASSES, "classifier_activation": None}}
    target.load_weights(str(tmp_path / "tuned.weights.h5"))
    changed = sum(not np.array_equal(a, b) for a, b in zip(target.get_weights(), expected))
    assert changed > len(expected) // 4, "fine-tuning moved too little to test the export"

    stages = jax.jit(lambda v, x: model.apply(v, x, train=False, return_stages=True))(tuned, x)
    names = stage_layers(target)
    probe = keras.Model(target.input, [target.get_layer(n).output for n in names])
    refs = list(R.keras_outputs(probe, x))
    assert list(stages) == list(model.stage_names) and len(refs) == len(stages)
    errors = [R.assert_parity(np.asarray(out), r, f"{arch} fine-tuned, exported: stage {name} vs Keras {layer}")
              for (name, out), r, layer in zip(stages.items(), refs, names)]
    print(f"\n{arch} -> keras: worst stage/logits error {max(errors):.2g}")
