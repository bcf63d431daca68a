"""Reference models from the source frameworks, with random weights, written in their real file formats.

BatchNorm running statistics and affine parameters are set to non-trivial random
values: with the defaults (mean 0, var 1) a port that ignored them would still pass.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np


def randomize_torch_bn(model, seed: int = 0) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


def torchvision_reference(arch: str, path: str, seed: int = 0, **kwargs):
    """``torchvision.models.<arch>(weights=None)`` in eval mode, saved with ``torch.save(state_dict)``."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, **kwargs)
    randomize_torch_bn(model, seed)
    model.eval()
    torch.save(model.state_dict(), path)
    return model


def torch_forward(model, x_nhwc: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def torch_logits_and_activation(model, x_nhwc: np.ndarray, module, *, entering: bool = False
                                ) -> tuple[np.ndarray, np.ndarray]:
    """The real ``model(x)`` logits and the activation leaving ``module`` (or entering it), caught by a hook."""
    caught = {}
    if entering:
        hook = module.register_forward_pre_hook(lambda m, inputs: caught.setdefault("a", inputs[0].clone()))
    else:
        hook = module.register_forward_hook(lambda m, inputs, out: caught.setdefault("a", out.clone()))
    try:
        logits = torch_forward(model, x_nhwc)
    finally:
        hook.remove()
    return logits, caught["a"].numpy()


def randomize_keras_bn(model, seed: int = 0) -> None:
    import keras

    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            new = []
            for w in layer.weights:
                name = w.path.rsplit("/", 1)[-1]
                lo, hi = (0.5, 2.0) if name in ("gamma", "moving_variance") else (-0.5, 0.5)
                new.append(rng.uniform(lo, hi, w.shape).astype("float32"))
            layer.set_weights(new)


def save_keras_h5(model, path: str) -> None:
    """The legacy HDF5 layout of the published ``keras.applications`` weight files."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def keras_reference(app: str, path: str, input_size: int, seed: int = 0, **kwargs):
    """``keras.applications.<app>(weights=None)`` with logits out, saved as legacy HDF5."""
    import keras

    keras.utils.set_random_seed(seed)
    kwargs.setdefault("classifier_activation", None)
    model = getattr(keras.applications, app)(weights=None, input_shape=(input_size, input_size, 3), **kwargs)
    randomize_keras_bn(model, seed)
    save_keras_h5(model, path)
    return model


def parity_error(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max(1, max |ref|): the issue's float32 parity bar is 1e-4."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return float(np.abs(np.asarray(out, np.float64) - ref).max() / max(1.0, float(np.abs(ref).max())))


PARITY_TOL = 1e-4


def assert_parity(out: np.ndarray, ref: np.ndarray, what: str, tol: float = PARITY_TOL) -> float:
    """Assert the parity bar; refuse vanishingly small references, against which any port would pass."""
    assert np.abs(ref).max() > 0.05, f"{what}: reference too small to compare ({np.abs(ref).max()})"
    err = parity_error(out, ref)
    assert err <= tol, f"{what}: parity error {err:.3g} > {tol}"
    return err


def logits_and_features(model, variables, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, pre-logit features) of our port from one jitted call (XLA shares the common forward)."""
    import jax

    fn = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, return_features=True)))
    logits, feats = fn(variables, x)
    return np.asarray(logits), np.asarray(feats)



def source_batch(photos, spec, size: int) -> np.ndarray:
    """Photos prepared with a weights spec, cropped at ``size`` with the spec's resize ratio and filter."""
    from tl_jax import preprocess

    spec = preprocess.get_spec(spec)
    resize = int(size / spec.crop_size * spec.resize_size)
    return np.stack([preprocess.normalize(preprocess.resize_and_center_crop(p, resize, size, spec.interpolation), spec)
                     for p in photos])


def port_outputs(model, variables, x):
    """(logits, pre-logit features) of the Flax port, whichever way costs less here (measured): Inception-V3,
    with its many distinct shapes, as one compiled program; the others eagerly (ResNet repeats one block
    shape, so op-by-op dispatch compiles each operation once; VGG costs the same either way), with the
    backbone run once: the logits are the head applied to the features (``input_stage="head"``, the same
    computation; test_stages checks the split is exact)."""
    from tl_jax.models.inception import InceptionV3

    if isinstance(model, InceptionV3):
        return logits_and_features(model, variables, x)
    features = model.apply(variables, x, return_features=True)
    logits = model.clone(input_stage="head").apply(variables, features)
    return np.asarray(logits), np.asarray(features)


def same_tree(a, b) -> bool:
    """Same tree structure and every leaf equal (NaN equal to NaN)."""
    import jax

    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y, equal_nan=True) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def keras_outputs(model, x) -> tuple[np.ndarray, ...]:
    """``model.predict(x)`` in one batch: Keras' own inference (training=False), compiled by its backend
    rather than run op by op (measured: about half the time of ``model(x)`` for ResNet50 and InceptionV3)."""
    out = model.predict(x, batch_size=len(x), verbose=0)
    return tuple(np.asarray(a) for a in (out if isinstance(out, (list, tuple)) else [out]))


def check_parity(name, refs, outs):
    """``refs[size]`` / ``outs[size]`` = (logits, features): every pair within the parity bar; returns the errors."""
    errors = {f"{kind}@{size}": parity_error(outs[size][i], refs[size][i])
              for size in refs for i, kind in enumerate(("logits", "features"))}
    print(f"\n{name}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    for size in refs:
        assert np.abs(refs[size][0]).max() > 0.05, f"{name}: reference logits too small to compare"
    assert max(errors.values()) <= PARITY_TOL, errors
    return errors


def convert_cli(*args: str) -> str:
    """Run scripts/convert_weights.py; it must succeed. Returns its stdout."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "scripts/convert_weights.py", *args], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def hooked_outputs(net, modules, x_nhwc: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """(the output of each of ``modules`` during ``net(x)``, NHWC where 4-D; the logits)."""
    caught, hooks = {}, []
    for i, module in enumerate(modules):
        hooks.append(module.register_forward_hook(lambda m, inp, out, i=i: caught.__setitem__(i, out.clone())))
    try:
        logits = torch_forward(net, x_nhwc)
    finally:
        for h in hooks:
            h.remove()
    outs = [caught[i].numpy() for i in range(len(modules))]
    return [a.transpose(0, 2, 3, 1) if a.ndim == 4 else a for a in outs], logits
