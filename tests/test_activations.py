"""Activation cache: training the suffix on the frozen prefix's cached output = training the model on images.

The synthetic source applies no augmentation, so the usual path (the whole model, one
``train_step`` per batch of images) and the cached path (the prefix computed once, the suffix
trained on its output) see the same batches in the same order. The reference is the usual run
through ``train`` with the same config, not numbers of our own.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tl_jax.experiment import activations, restore, run, setup
from tl_jax.experiment import config as config_lib
from tl_jax.tree import flat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "default.py")
BASE = {"data.source": "synthetic", "data.train_split": "train", "data.eval_split": "test",
        "data.num_examples": 40, "data.image_size": 32, "model.arch": "resnet18", "model.dtype": "float32",
        "batch_size": 8, "num_steps": 10, "log_every_steps": 2, "checkpoint_every_steps": 5,
        "eval_every_epochs": 1, "parallel": "none", "label_smoothing": 0.1,
        "optim.name": "sgd", "optim.learning_rate": 0.05, "optim.weight_decay": 1e-3, "optim.warmup_epochs": 0.4,
        "optim.grad_clip_norm": 1.0, "tensorboard": False}


def _config(**kw):
    return config_lib.load_config(DEFAULT, {**BASE, **kw})


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Depths 3 and 4 trained the usual way and from the cache, with wall times (head only, the cached
    linear probe: tests/test_quickstart.py)."""
    root = tmp_path_factory.mktemp("cache")
    out = {}
    for depth in (3, 4):
        for cached in (False, True):
            d = str(root / f"d{depth}_{'cache' if cached else 'images'}")
            t = time.perf_counter()
            result = run.train(_config(**{"freeze.frozen_depth": depth, "activation_cache": cached}), d,
                               progress=False, echo=False)
            out[depth, cached] = (result, time.perf_counter() - t, restore.restore_run(d), d)
    return out, root


@pytest.mark.parametrize("depth", [3, 4])
def test_cached_prefix_trains_the_same_suffix_as_the_whole_model(pairs, depth):
    out, _ = pairs
    (slow, slow_s, a, _), (fast, fast_s, b, d) = out[depth, False], out[depth, True]
    assert slow["path"] == "fit" and fast["path"] == "activation_cache"
    assert fast["activation_cache"]["stage"] == ("layer3", "layer4")[depth - 3]
    assert a.step == b.step == 10
    init = flat(setup.prepare(_config(**{"freeze.frozen_depth": depth})).setup.variables)
    got, want = flat(b.variables), flat(a.variables)
    for k, v in init.items():
        stage = k.split("/")[1]
        if ("stem", "layer1", "layer2", "layer3", "layer4", "head").index(stage) < depth:
            np.testing.assert_array_equal(got[k], v, err_msg=f"frozen {k} moved")    # bit-identical
            np.testing.assert_array_equal(want[k], v, err_msg=f"frozen {k} moved")
        else:
            assert not np.array_equal(want[k], v), f"{k} did not train"
            assert _rel(got[k], want[k]) <= 1e-6, (k, _rel(got[k], want[k]))
    assert fast["final_eval"]["count"] == slow["final_eval"]["count"] == 40
    assert fast["final_eval"]["top1"] == slow["final_eval"]["top1"]
    info = json.load(open(os.path.join(d, "run.json")))["activation_cache"]
    assert info["used"] and (info["rows"], info["eval_rows"]) == (40, 40)
    assert info["bytes"] == (40 + 40) * int(np.prod(info["row_shape"])) * 4
    print(f"\ndepth {depth}, 10 steps of 8 images at 32 px (ResNet-18, CPU): images {slow_s:.1f} s, "
          f"cache {fast_s:.1f} s (extraction {fast['activation_cache']['extract_s']:.1f} s)")


def test_the_cache_is_reused_and_keyed_by_what_changes_the_activations(pairs):
    out, root = pairs
    work = out[4, True][3]
    files = sorted(os.listdir(os.path.join(work, activations.CACHE_DIR)))
    assert len(files) == 4 and sum(f.endswith(".npy") for f in files) == 2    # train and eval split, each + key
    exp = setup.prepare(_config(**{"freeze.frozen_depth": 4, "activation_cache": True}))
    cache = activations.plan(exp, log=lambda m: None)
    x, y, stats = activations.cached_rows(exp, work, cache, "train", "train")
    assert stats["hit"] and x.shape == (40, 2, 2, 256) and y.shape == (40,)
    # The cached rows are the prefix's output on the training images.
    images = np.concatenate([b["image"] for b in setup.make_data(exp.config, exp.metadata, "train",
                                                                 train=False).batches(0)])[:8]
    direct = exp.setup.model.apply(exp.setup.variables, images, stop_at="layer4")
    np.testing.assert_allclose(x[:8], direct, rtol=1e-5, atol=1e-6)
    keys = [activations.cache_key(exp, cache, "test", "eval"),
            activations.cache_key(setup.prepare(config_lib.override(exp.config, {"seed": 1})), cache, "train", "train"),
            activations.cache_key(setup.prepare(config_lib.override(exp.config, {"model.fold_frozen_bn": False})),
                                  cache, "train", "train")]
    paths = {activations.cache_path(work, k) for k in [activations.cache_key(exp, cache, "train", "train"), *keys]}
    assert len(paths) == 4   # split, (through the random init) the seed, and folding all change the key


def test_augmented_views_cache_one_training_epoch_per_view(tmp_path):
    exp = setup.prepare(_config(**{"freeze.frozen_depth": 5, "activation_cache": True,
                                   "activation_cache_views": 2}))
    cache = activations.plan(exp, log=lambda m: None)
    x, y, stats = activations.cached_rows(exp, str(tmp_path), cache, "train", "train")
    spe = exp.train_data.steps_per_epoch
    assert not stats["hit"] and len(y) == 2 * spe * 8 == cache.train_rows
    epochs = [np.concatenate([b["label"] for b, _ in zip(exp.train_data.batches(e * spe), range(spe))])
              for e in range(2)]
    np.testing.assert_array_equal(y, np.concatenate(epochs))


@pytest.mark.parametrize("overrides,why", [
    ({"freeze.frozen_depth": 0}, "the first stage trains"),
    ({"freeze.frozen_depth": 4, "freeze.patterns": ("^layer4/block0/conv1/",)}, "freeze.patterns"),
    ({"freeze.lp_ft_steps": 4}, "nothing below a trainable stage stays frozen for the whole run"),
    ({"freeze.frozen_depth": 4, "data.source": "digits", "data.train_split": "all[:10%]",
      "data.eval_split": "all[10%:20%]", "data.image_size": 8, "data.resize_size": 8}, "randomly augmented"),
])
def test_where_the_cache_cannot_be_exact_it_says_so_in_one_line(overrides, why):
    exp = setup.prepare(_config(**{"activation_cache": True, **overrides}))
    with pytest.warns(UserWarning, match=why) as caught:
        assert activations.plan(exp, log=lambda m: None) is None
    assert "\n" not in str(caught[0].message) and "training the usual way" in str(caught[0].message)


def test_a_cache_above_the_limit_is_refused_before_anything_runs(tmp_path):
    lines = []
    exp = setup.prepare(_config(**{"freeze.frozen_depth": 2, "activation_cache": True,
                                   "activation_cache_max_gb": 1e-5}))
    with pytest.raises(config_lib.ConfigError, match=r"would hold 0\.0+\d+ GB .* activation_cache_max_gb=1e-05") as e:
        activations.plan(exp, log=lines.append)
    assert "\n" not in str(e.value) and not lines and not os.listdir(tmp_path)


def test_an_interrupted_cached_run_resumes_to_the_same_result(pairs, tmp_path):
    """Killed by SIGKILL in train.py, resumed here by ``train`` (what train.py runs) with the same config:
    no second process start, and the compiled steps of the reference run are reused."""
    out, _ = pairs
    reference = out[4, True]
    work = str(tmp_path / "cut")
    overrides = {**BASE, "freeze.frozen_depth": 4, "activation_cache": True, "checkpoint_every_steps": 1}
    args = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config", DEFAULT, "--workdir", work,
            *[f"--config.{k}={v}" for k, v in overrides.items()]]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.time() + 300
        while not os.path.isdir(os.path.join(work, activations.SUFFIX_DIR, "checkpoints", "4")):
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    with pytest.warns(UserWarning, match="taking over the lock of a run that is gone"):   # the killed run's
        assert run.train(_config(**overrides), work, progress=False, echo=False)["finished"]
    result = json.load(open(os.path.join(work, "result.json")))
    assert result["resumed_from"] >= 4 and result["activation_cache"]["cache_hit"]
    got, want = flat(restore.restore_run(work).variables), flat(reference[2].variables)
    assert max(_rel(got[k], want[k]) for k in want) <= 1e-6
    assert result["final_eval"] == reference[0]["final_eval"]


def test_the_cache_benchmark_on_an_image_folder(tmp_path):
    """scripts/benchmark_cache.py at toy size: PNGs at the training size, decoded by the tf.data pipeline,
    give the cached pass's pixels (checked on the first batch), and the two runs end at the same parameters."""
    from tl_jax.bench import cache_speed

    r = cache_speed.compare(DEFAULT, depth=4, resolution=32, epochs=2, classes=2, per_class=10, batch=4,
                            workdir=str(tmp_path))
    assert r["cache"]["used"] and r["cache"]["stage"] == "layer4" and r["speedup"] > 0
    assert r["max_relative_difference"] <= 1e-6 and r["cache_top1"] == r["no_cache_top1"]
