"""Linear probe on cached features: training the head on cached features = training the frozen model on images.

The synthetic source applies no augmentation, so the usual path (full model, every backbone
stage frozen, one ``train_step`` per batch of images) and the fast path (features computed
once, the head trained on them) see the same batches in the same order. After the same
steps their heads must agree; the backbone and BatchNorm statistics must not move at all.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from tl_jax.experiment import config as config_lib
from tl_jax.experiment import probe, restore, run, setup
from tl_jax.freeze import FreezeSpec
from tl_jax.tree import flat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "default.py")
PROBE = {"data.source": "synthetic", "data.train_split": "train", "data.eval_split": "test",
         "data.num_examples": 40, "data.image_size": 32, "model.arch": "resnet18", "model.dtype": "float32",
         "batch_size": 8, "num_steps": 12, "log_every_steps": 2, "checkpoint_every_steps": 12,
         "eval_every_epochs": 1, "freeze.frozen_depth": -1, "parallel": "none", "label_smoothing": 0.1,
         "optim.name": "sgd", "optim.learning_rate": 0.1, "optim.weight_decay": 1e-3, "optim.warmup_epochs": 0.4,
         "optim.grad_clip_norm": 1.0, "tensorboard": False}


@pytest.fixture(scope="module")
def two_paths(tmp_path_factory):
    """The same probe trained the usual way and on cached features, with wall times."""
    root = tmp_path_factory.mktemp("probe")
    out = {}
    for fast in (False, True):
        config = config_lib.load_config(DEFAULT, {**PROBE, "feature_cache": fast})
        t = time.perf_counter()
        result = run.train(config, str(root / ("fast" if fast else "slow")), progress=False, echo=False)
        out[fast] = (result, time.perf_counter() - t, restore.restore_run(str(root / ("fast" if fast else "slow"))))
    exp = setup.prepare(config_lib.load_config(DEFAULT, PROBE))
    return out, exp, root


def test_cached_features_train_the_same_head_as_the_frozen_model(two_paths):
    out, exp, _ = two_paths
    (slow, slow_s, a), (fast, fast_s, b) = out[False], out[True]
    assert slow["path"] == "fit" and fast["path"] == "feature_cache"
    assert a.step == b.step == 12
    head0 = flat(exp.setup.variables["params"]["head"])
    ha, hb = flat(a.variables["params"]["head"]), flat(b.variables["params"]["head"])
    for k in ha:
        assert not np.allclose(ha[k], head0[k]), f"head {k} did not train"
        np.testing.assert_allclose(hb[k], ha[k], rtol=2e-5, atol=2e-6, err_msg=k)
    # Nothing else moved, on either path (backbone weights and BatchNorm statistics bit-identical).
    init = flat(dict(exp.setup.variables))
    for path, restored in (("slow", a), ("fast", b)):
        got = flat(restored.variables)
        for k, v in init.items():
            if not k.startswith("params/head/"):
                np.testing.assert_array_equal(got[k], v, err_msg=f"{path}: {k} moved")
    assert fast["final_eval"]["count"] == slow["final_eval"]["count"] == 40
    assert fast["final_eval"]["top1"] == pytest.approx(slow["final_eval"]["top1"], abs=1 / 40 + 1e-9)
    assert fast["final_eval"]["loss"] == pytest.approx(slow["final_eval"]["loss"], rel=1e-4)
    print(f"\nlinear probe, 12 steps of 8 images at 32 px (ResNet-18, CPU): usual path {slow_s:.1f} s, "
          f"cached features {fast_s:.1f} s (extraction {fast['feature_extract_s']:.1f} s): "
          f"{slow_s / fast_s:.1f}x end to end; steady state {slow['steps_per_s']:.1f} vs "
          f"{fast['steps_per_s']:.0f} steps/s")


def test_the_cache_is_reused_and_keyed_by_what_changes_the_features(two_paths):
    _, exp, root = two_paths
    work = str(root / "fast")
    cached = sorted(os.listdir(os.path.join(work, probe.CACHE_DIR)))
    assert len(cached) == 2 and all(n.endswith(".npz") for n in cached)  # train and eval split
    f, y, stats = probe.cached_features(exp, work, "train", "train", 1)
    assert stats["hit"] and f.shape == (40, 512) and y.shape == (40,)
    # The cached rows are the backbone's features of the eval-transformed training images.
    images = np.concatenate([b["image"] for b in setup.make_data(exp.config, exp.metadata, "train",
                                                                 train=False).batches(0)])[:40]
    direct = exp.setup.model.apply(exp.setup.variables, images[:8], train=False, return_features=True)
    np.testing.assert_allclose(f[:8], direct, rtol=1e-5, atol=1e-6)
    reseeded = setup.prepare(config_lib.override(exp.config, {"seed": 1}))
    key = probe.cache_key(exp, "train", "train", 1)
    others = [probe.cache_key(exp, "test", "eval", 1), probe.cache_key(exp, "train", "train", 2),
              probe.cache_key(reseeded, "train", "train", 1)]
    paths = {probe.cache_path(work, k) for k in [key, *others]}
    assert len(paths) == 4  # split, views and (through the random init) the seed all change the key


def test_augmented_views_cache_one_training_epoch_per_view(tmp_path):
    config = config_lib.load_config(DEFAULT, {**PROBE, "feature_cache": True, "feature_cache_views": 2})
    exp = setup.prepare(config)
    f, y, stats = probe.cached_features(exp, str(tmp_path), "train", "train", 2)
    spe = exp.train_data.steps_per_epoch
    assert not stats["hit"] and len(y) == 2 * spe * 8
    epochs = [np.concatenate([b["label"] for b, _ in zip(exp.train_data.batches(e * spe), range(spe))])
              for e in range(2)]
    np.testing.assert_array_equal(y, np.concatenate(epochs))


def test_feature_cache_is_ignored_unless_every_backbone_stage_is_frozen():
    config = config_lib.load_config(DEFAULT, {**PROBE, "feature_cache": True, "freeze.frozen_depth": 3})
    spec = FreezeSpec.from_config(config.freeze, ("stem", "layer1", "layer2", "layer3", "layer4", "head"))
    with pytest.warns(UserWarning, match="feature_cache ignored"):
        assert not probe.applies(config, spec)
