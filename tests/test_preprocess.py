"""Our preprocessing equals torchvision.transforms and keras.applications' preprocess_input."""
from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

from tl_jax import preprocess
from tl_jax.models import registry

TOL = 1e-5


@pytest.fixture(scope="module", params=["astronaut", "chelsea", "coffee"])
def photo(request):
    """A real decoded photo (uint8 RGB); both sides get exactly these pixels."""
    data = pytest.importorskip("skimage.data")
    return getattr(data, request.param)()


@pytest.mark.parametrize("name", ["torchvision", "torchvision_inception"])
def test_matches_torchvision_transforms(photo, name):
    from PIL import Image
    from torchvision import transforms as T

    spec = preprocess.SPECS[name]
    pil = Image.fromarray(photo)
    ref = T.Compose([T.Resize(spec.resize_size), T.CenterCrop(spec.crop_size), T.ToTensor(),
                     T.Normalize(spec.mean, spec.std)])(pil).numpy().transpose(1, 2, 0)
    out = preprocess.prepare(pil, spec)
    assert out.shape == ref.shape == (spec.crop_size, spec.crop_size, 3)
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() <= TOL


@pytest.mark.parametrize("app, name", [("vgg16", "caffe"), ("resnet50", "caffe"), ("inception_v3", "tf")])
def test_matches_keras_preprocess_input(photo, app, name):
    import importlib

    keras_app = importlib.import_module(f"keras.applications.{app}")
    spec = preprocess.SPECS[name]
    pixels = preprocess.resize_and_center_crop(photo, spec.resize_size, spec.crop_size)[None]
    ref = np.asarray(keras_app.preprocess_input(pixels.astype(np.float32)))  # it edits float input in place
    out = preprocess.normalize(pixels, name)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOL


def test_normalize_runs_in_jax(photo):
    import jax
    import jax.numpy as jnp

    pixels = preprocess.resize_and_center_crop(photo, 256, 224)[None]
    for name in preprocess.SPECS:
        expected = preprocess.normalize(pixels, name)
        got = jax.jit(lambda x, name=name: preprocess.normalize(x, name))(jnp.asarray(pixels))
        np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=TOL)


def test_registry_names_specs_that_fit_its_models():
    for arch, source in registry.available():
        info = registry.model_config(arch, source)
        assert preprocess.get_spec(info.preprocessing).crop_size == info.input_size, (arch, source)


def test_spec_from_metadata_round_trip():
    for spec in preprocess.SPECS.values():
        stored = json.loads(json.dumps({"preprocessing": spec.to_dict()}))
        assert preprocess.spec_from_metadata(stored) == spec
        assert preprocess.spec_from_metadata({"preprocessing": spec.name}) == spec
    with pytest.raises(ValueError, match="no 'preprocessing'"):
        preprocess.spec_from_metadata({"arch": "resnet50"})
    with pytest.raises(ValueError, match="lacks fields"):
        preprocess.spec_from_metadata({"preprocessing": {"name": "x", "divisor": 1.0}})
    with pytest.raises(ValueError, match="unknown preprocessing 'imagenet'"):
        preprocess.get_spec("imagenet")


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="3 channels last"):
        preprocess.normalize(np.zeros((2, 3, 32, 32), np.uint8), "tf")
    with pytest.raises(ValueError, match="larger than the resized image"):
        preprocess.resize_and_center_crop(np.zeros((100, 120, 3), np.uint8), 64, 80)
