"""``in_channels``: pretrained RGB weights on grayscale or multispectral input, adapted as timm adapts them.

Checked against the reference behaviour, not our own numbers: a gray image repeated on three channels
through the RGB model gives what the gray channel gives through the adapted one-channel model; timm's own
``adapt_input_conv`` gives the same kernels.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

import references as R
from tl_jax import create, load_pretrained
from tl_jax.models import channels
from tl_jax.weights import importer

CLASSES = 5


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A ResNet-18 converted from a torchvision reference file (random weights, randomised BatchNorm)."""
    tmp = tmp_path_factory.mktemp("in_channels")
    R.torchvision_reference("resnet18", str(tmp / "resnet18.pth"), seed=0)
    importer.convert_weights("resnet18", "torchvision", tmp / "store", str(tmp / "resnet18.pth"))
    return tmp / "store"


def test_gray_through_one_channel_equals_gray_repeated_through_rgb(store):
    rgb_model, rgb, _ = load_pretrained(store, CLASSES, seed=1)
    gray_model, gray, meta = load_pretrained(store, CLASSES, seed=1, in_channels=1)
    assert gray_model.in_channels == 1 and meta["model_kwargs"]["in_channels"] == 1
    assert gray["params"]["stem"]["conv1"]["kernel"].shape == (7, 7, 1, 64)
    x = np.random.RandomState(0).randn(2, 32, 32, 1).astype(np.float32)
    ref = np.asarray(rgb_model.apply(rgb, np.repeat(x, 3, axis=-1)))
    R.assert_parity(np.asarray(gray_model.apply(gray, x)), ref, "C=1 vs RGB repeated", tol=1e-5)
    # Only the first convolution changed; the new head is the same seed's head.
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(rgb), dict(jax.tree_util.tree_leaves_with_path(gray))
    changed = [jax.tree_util.keystr(p) for p, a in flat_a if np.shape(a) != np.shape(flat_b[p])
               or not np.array_equal(a, flat_b[p])]
    assert changed == ["['params']['stem']['conv1']['kernel']"]


@pytest.mark.parametrize("c", [1, 2, 4, 5, 8])
def test_kernels_equal_timms_adapt_input_conv(c):
    torch = pytest.importorskip("torch")
    timm_adapt = pytest.importorskip("timm.models._manipulate").adapt_input_conv
    kernel = np.random.RandomState(c).randn(7, 7, 3, 16).astype(np.float32)   # HWIO
    ref = timm_adapt(c, torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())).numpy().transpose(2, 3, 1, 0)
    np.testing.assert_allclose(channels.adapt_input_conv(kernel, c), ref, rtol=1e-6, atol=1e-6)


def test_multispectral_model_runs_and_wrong_channels_are_one_clear_error(store):
    model, variables, _ = load_pretrained(store, CLASSES, in_channels=5, frozen_stages=("stem", "layer1"))
    x = np.random.RandomState(1).randn(2, 32, 32, 5).astype(np.float32)
    assert model.apply(variables, x).shape == (2, CLASSES)
    with pytest.raises(ValueError, match=r"with 5 channels, got shape \(2, 32, 32, 3\); build it with in_channels=3"):
        model.apply(variables, x[..., :3])
    with pytest.raises(ValueError, match="transform_input=False"):
        m = create("inception_v3", "torchvision", num_classes=CLASSES, in_channels=1)
        jax.eval_shape(m.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 75, 75, 1), np.float32))
    with pytest.raises(ValueError, match="only RGB weights adapt"):
        channels.adapt_input_conv(np.zeros((3, 3, 4, 8), np.float32), 1)
