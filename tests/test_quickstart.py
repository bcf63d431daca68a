"""The quickstart's pipeline at toy size: pretrain on glyphs, save as weights, few-label transfer, stage probe.

The real numbers are the README's (scripts/quickstart.py); here the pipeline runs with two steps per run to
check what it writes and that a second call reuses everything.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tl_jax.data import glyphs
from tl_jax.experiment import quickstart
from tl_jax.weights import store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quickstart.py")
TINY = {"num_steps": 2, "data.num_examples": 640}


def test_glyphs_are_broad_printed_characters_coarsened_like_the_digits():
    from sklearn.datasets import load_digits

    images, labels = glyphs.render(620, 0)
    assert images.shape == (620, 8, 8) and images.dtype == np.uint8 and images.max() <= 16
    assert set(labels) == set(range(62)) and len(glyphs.fonts()) >= 20
    np.testing.assert_array_equal(glyphs.render(620, 0)[0], images)          # seeded
    assert not np.array_equal(glyphs.render(620, 1)[0], images)
    # Ink coverage in the digits' range (a blank or saturated render would be far off).
    assert 0.5 < images.mean() / load_digits().images.mean() < 2.0
    train, test = glyphs.load("train", num_examples=620), glyphs.load("test", num_examples=620)
    assert train.num_examples == 558 and test.num_examples == 62 and train.num_classes == 62


def test_quickstart_writes_the_summary_curve_and_ablation_and_reuses_its_runs(tmp_path):
    work = str(tmp_path / "qs")
    lines = []
    summary = quickstart.run_quickstart(CONFIG, work, seeds=(0,), shots=(1, 2), depths="5", overrides=TINY,
                                        progress=False, log=lines.append)
    variants = {"depth5", "scratch"}
    assert {(r["labels_per_class"], r["variant"]) for r in summary["records"]} == {
        (k, v) for k in (1, 2) for v in variants}
    for r in summary["records"]:
        assert set(r) == {"labels_per_class", "variant", "frozen_depth", "top1_mean", "top1_std", "seeds",
                          "trainable_params", "train_images_per_s", "wall_s"}
        assert 0 <= r["top1_mean"] <= 1 and r["seeds"] == [0]
    head_only = {r["variant"]: r["trainable_params"] for r in summary["records"] if r["labels_per_class"] == 1}
    assert head_only["depth5"] == 512 * 10 + 10 < head_only["scratch"]
    cached = json.load(open(os.path.join(work, "labels1", "runs", "depth5_seed0", "result.json")))
    assert cached["path"] == "activation_cache"        # the frozen backbone ran once (the digits: no augmentation)
    assert json.load(open(os.path.join(work, "summary.json")))["records"] == summary["records"]
    for png in ("transfer_curve.png", "frozen_depth.png", "stage_probe/probe.png"):
        assert open(os.path.join(work, png), "rb").read(4) == b"\x89PNG", png
    # The pretrained backbone is an ordinary weights store, as a converted ImageNet model would be.
    meta = store.read_metadata(os.path.join(work, quickstart.STORE))
    assert (meta["arch"], meta["num_classes"], meta["input_size"]) == ("resnet18", 62, 8)
    probe = summary["probe"]["settings"]
    assert [s["labels_per_class"] for s in probe] == [1, 2] and len(probe[0]["probe_top1"]) == 5
    assert "| depth5 | 5,130 |" in quickstart.format_table(summary)

    again = quickstart.run_quickstart(CONFIG, work, seeds=(0,), shots=(1, 2), depths="5", overrides=TINY,
                                      progress=False, log=lines.append)
    assert again["records"] == summary["records"]
    assert again["probe"]["extract_s"] == 0.0
    with pytest.raises(ValueError, match="another config"):        # a changed recipe needs a new workdir
        quickstart.run_quickstart(CONFIG, work, seeds=(0,), shots=(1,), depths="5", overrides={**TINY, "seed": 1},
                                  progress=False, log=lines.append)
