"""The transferability studies, shrunken (2 steps a run, a small render): files, fields, and that each
treatment froze, re-initialised or trained what it says (parameters compared with their sources).

The studies' numbers are the README's (scripts/transfer_study.py); here the pipeline runs at toy size.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from tl_jax.experiment import restore, transfer_study
from tl_jax.tree import flat
from tl_jax.weights import store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "transfer_study.py")
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
TINY = {"num_steps": 2, "data.num_examples": 1240, "batch_size": 16, "eval_batch_size": 62,
        "log_every_steps": 1, "checkpoint_every_steps": 2}


def _stages_equal(a: dict, b: dict) -> dict[str, bool]:
    """Per stage: every parameter and statistic of ``a`` equals ``b``'s bit for bit."""
    fa, fb = flat(a), flat(b)
    return {s: all(np.array_equal(fa[k], fb[k]) for k in fa if k.split("/")[1] == s) for s in STAGES}


def test_class_split_is_two_fixed_disjoint_halves():
    a, b = transfer_study.class_split(0)
    assert len(a) == len(b) == 31 and not set(a) & set(b) and set(a) | set(b) == set(range(62))
    assert transfer_study.class_split(0) == (a, b) and transfer_study.class_split(1) != (a, b)


def test_yosinski_at_toy_size(tmp_path):
    work = str(tmp_path / "yos")
    summary = transfer_study.yosinski(CONFIG, work, seeds=(0,), log=lambda m: None,
                                      overrides={**TINY, "study.copied_stages": (2,)})
    runs = {r["run"]: r for r in summary["runs"]}
    assert set(runs) == {"baseA_seed0", "baseB_seed0", "BnB_n2_seed0", "BnB+_n2_seed0", "AnB_n2_seed0",
                         "AnB+_n2_seed0"}
    assert set(summary["classes_A"]) | set(summary["classes_B"]) == set(range(62))
    for r in summary["runs"]:
        assert r["steps"] == 2 and 0 <= r["top1"] <= 1 and r["wall_s"] > 0
    # Each half is evaluated on its own held-out glyphs; every transfer run on B's.
    assert runs["baseA_seed0"]["eval_count"] + runs["baseB_seed0"]["eval_count"] == 124
    assert all(r["eval_count"] == runs["baseB_seed0"]["eval_count"] for r in summary["runs"] if r["evaluated_on"] == "B")
    assert runs["BnB_n2_seed0"]["activation_cache"] and not runs["BnB+_n2_seed0"]["activation_cache"]
    with open(os.path.join(work, "study.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"treatment", "n", "seed", "top1", "steps", "wall_s"} <= set(rows[0])
    assert open(os.path.join(work, "study.png"), "rb").read(4) == b"\x89PNG"
    assert json.load(open(os.path.join(work, "study.json")))["table"]["BnB"]["2"]["seeds"] == 1
    assert "| BnB+ |" in transfer_study.format_table(summary)
    # What each treatment did to its source network (the base's weights store).
    for treatment, source in (("BnB", "B"), ("BnB+", "B"), ("AnB", "A"), ("AnB+", "A")):
        _, copied, _ = store.load_pretrained(os.path.join(work, "weights", f"base{source}_seed0"))
        run_dir = os.path.join(work, "runs", f"{treatment}_n2_seed0")
        same = _stages_equal(restore.restore_run(run_dir).variables, copied)
        frozen = not treatment.endswith("+")
        assert same == {s: frozen and s in ("stem", "layer1") for s in STAGES}, (treatment, same)
        info = json.load(open(os.path.join(run_dir, "run.json")))
        assert info["reinit_from"] == "2" and info["frozen_stages"] == (["stem", "layer1"] if frozen else [])
        assert info["config"]["data"]["classes"] == summary["classes_B"]


def test_surgical_at_toy_size(tmp_path):
    work = str(tmp_path / "surgical")
    summary = transfer_study.surgical(
        CONFIG, work, seeds=(0,), log=lambda m: None,
        overrides={**TINY, "data.labels_per_class": 2, "study.variants": ("layer2", "head", "lp_ft"),
                   "study.shifts": ("invert",)})
    runs = {r["run"]: r for r in summary["runs"]}
    assert set(summary["table"]) == {"invert"} and set(summary["table"]["invert"]) == {"layer2", "head", "lp_ft"}
    _, source, _ = store.load_pretrained(os.path.join(work, "weights", "source"))
    for shift in ("invert",):
        for variant, moved in (("layer2", {"layer2"}), ("head", {"head"}), ("lp_ft", set(STAGES))):
            run_dir = os.path.join(work, "runs", f"{shift}_{variant}_seed0")
            same = _stages_equal(restore.restore_run(run_dir).variables, source)
            assert {s for s, eq in same.items() if not eq} == moved, (shift, variant, same)
            assert runs[f"{shift}_{variant}_seed0"]["eval_count"] == 124
    assert runs["invert_layer2_seed0"]["activation_cache"]
    assert open(os.path.join(work, "study.png"), "rb").read(4) == b"\x89PNG"
    assert "| lp_ft |" in transfer_study.format_table(summary)
    with pytest.raises(ValueError, match="unknown 'layer9'"):
        transfer_study.surgical(CONFIG, str(tmp_path / "bad"), overrides={**TINY, "study.variants": ("layer9",)},
                                log=lambda m: None)
    assert not (tmp_path / "bad").exists()       # refused before pretraining


def test_shifts_are_fixed_and_change_what_they_say():
    from tl_jax.data import glyphs, shifts

    plain = glyphs.load("test", num_examples=620)
    for shift in ("invert", "noise", "blur", "permute_labels"):
        a, b = glyphs.load("test", num_examples=620, shift=shift), glyphs.load("test", num_examples=620, shift=shift)
        np.testing.assert_array_equal(a.images, b.images)                      # a fixed shift, not augmentation
        changes_images = not np.array_equal(a.images, plain.images)
        assert changes_images == (shift != "permute_labels"), shift
        assert np.array_equal(a.labels, plain.labels) == (shift != "permute_labels"), shift
    perm = shifts.derangement(62)
    assert sorted(perm) == list(range(62)) and not (perm == np.arange(62)).any()
    counts, labels = glyphs.render(620, 0)
    np.testing.assert_array_equal(shifts.apply(counts, labels, 62, "invert")[0], 16 - counts)
    with pytest.raises(ValueError, match="unknown shift 'rotate'"):
        glyphs.load("test", num_examples=620, shift="rotate")
