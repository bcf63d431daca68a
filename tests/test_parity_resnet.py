"""Every ResNet port reproduces its source framework to 1e-4 (parity_error), end to end.

Each reference has random weights and randomised BatchNorm statistics, is written
in the real file format (torch.save state_dict / Keras legacy HDF5), and converted
through the public path: the CLI + ``load_pretrained`` for ResNet-50 of each
source, ``convert_torchvision`` / ``convert_keras`` for the others. Inputs are
real photos prepared with the source's preprocessing, at 224 and at 160.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

import references as R
from tl_jax import load_pretrained, preprocess
from tl_jax.models import registry
from tl_jax.weights import importer

ROOT = Path(__file__).resolve().parents[1]
TOL = R.PARITY_TOL
SIZES = (224, 160)
CLI_ARCH = "resnet50"  # per source: converted by the CLI and loaded with load_pretrained


@pytest.fixture(scope="module")
def photos():
    data = pytest.importorskip("skimage.data")
    return [data.astronaut(), data.chelsea()]


def batch(photos, spec_name: str, size: int) -> np.ndarray:
    """Two photos resized and cropped to ``size`` (same 0.875 ratio), normalised for the source."""
    resize = round(size / 0.875)
    return np.stack([preprocess.normalize(preprocess.resize_and_center_crop(p, resize, size), spec_name)
                     for p in photos])


def convert_and_load(arch, source, path, tmp_path, convert_fn):
    if arch == CLI_ARCH:
        out = tmp_path / f"{arch}_{source}"
        assert importer.convert_weights(arch, source, out, path)["num_classes"] == 1000
        model, variables, metadata = load_pretrained(out)
        assert (metadata["arch"], metadata["source"], metadata["num_classes"]) == (arch, source, 1000)
        return model, variables
    return registry.create(arch, source), convert_fn(arch, str(path))


def check(name, refs, outs):
    errors = {}
    for size in SIZES:
        for kind, ref, out in (("logits", refs[size][0], outs[size][0]), ("features", refs[size][1],
                                                                            outs[size][1])):
            errors[f"{kind}@{size}"] = R.parity_error(out, ref)
    print(f"\n{name}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_resnet(depth, photos, tmp_path):
    import torch

    from tl_jax.weights.torchvision import convert_torchvision

    arch = f"resnet{depth}"
    path = tmp_path / f"{arch}.pth"
    ref = R.torchvision_reference(arch, str(path), seed=depth)
    captured = {}
    ref.fc.register_forward_hook(lambda mod, inp, out: captured.update(features=inp[0].numpy()))
    model, variables = convert_and_load(arch, "torchvision", path, tmp_path, convert_torchvision)
    refs, outs = {}, {}
    with torch.no_grad():
        for size in SIZES:
            x = batch(photos, "torchvision", size)
            refs[size] = (R.torch_forward(ref, x), captured["features"])
            outs[size] = R.port_outputs(model, variables, x)
    check(f"torchvision {arch}", refs, outs)


@pytest.mark.parametrize("depth", [50, 101, 152])
def test_keras_resnet(depth, photos, tmp_path):
    import keras

    from tl_jax.weights.keras import convert_keras

    arch = f"resnet{depth}"
    path = tmp_path / f"{arch}.h5"
    ref = R.keras_reference(f"ResNet{depth}", str(path), 224, seed=depth)
    # The application fixes its input at 224; the same graph with a free spatial size runs at 160.
    config = ref.get_config()
    config["layers"][0]["config"]["batch_shape"] = (None, None, None, 3)
    free = keras.Model.from_config(config)
    free.set_weights(ref.get_weights())
    both = keras.Model(free.input, [free.output, free.get_layer("avg_pool").output])
    model, variables = convert_and_load(arch, "keras", path, tmp_path, convert_keras)
    refs, outs = {}, {}
    for size in SIZES:
        x = batch(photos, "caffe", size)
        refs[size] = tuple(np.asarray(a) for a in both(x, training=False))
        outs[size] = R.port_outputs(model, variables, x)
    check(f"keras {arch}", refs, outs)
