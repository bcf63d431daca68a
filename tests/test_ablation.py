"""Frozen-depth ablation: outputs, resumability (finished runs are skipped), variant planning."""
from __future__ import annotations

import csv
import json
import os

import pytest

from tl_jax.experiment import ablation, run
from tl_jax.experiment.config import ConfigError, load_config
from tl_jax.experiment.rundir import RESULT, RunDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "default.py")
TINY = {"data.source": "synthetic", "data.train_split": "train", "data.eval_split": "test",
        "data.num_examples": 16, "data.image_size": 32, "model.arch": "resnet18", "model.dtype": "float32",
        "batch_size": 8, "num_steps": 2, "log_every_steps": 1, "checkpoint_every_steps": 2,
        "eval_every_epochs": 1, "parallel": "none", "tensorboard": False}


def test_variants_cover_the_requested_depths_surgical_stages_and_scratch():
    config = load_config(DEFAULT, TINY)
    runs = ablation.variants(config, "all", surgical=True, scratch=True, activation_cache=True)
    stages = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [v.name for v in runs] == [f"depth{d}" for d in range(6)] + [f"only_{s}" for s in stages] + ["scratch"]
    assert runs[3].note == "stem+layer1+layer2"
    assert dict(runs[-1].overrides)["weights"] == ""
    # The cache where something below a trainable stage stays frozen: not at depth 0, only_stem or scratch.
    assert [v.name for v in runs if not dict(v.overrides)["activation_cache"]] == ["depth0", "only_stem", "scratch"]
    only2 = dict(runs[8].overrides)
    assert runs[8].kind == "surgical" and only2["freeze.trainable_stages"] == ("layer2",)
    assert only2["freeze.frozen_depth"] == 0 and runs[8].depth == 2
    assert [v.depth for v in ablation.variants(config, "0,-1")] == [0, 5]
    assert [v.name for v in ablation.variants(config, "none", surgical=True)] == [f"only_{s}" for s in stages]
    with pytest.raises(ConfigError, match="out of range"):
        ablation.variants(config, "0,6")


def test_a_second_invocation_skips_finished_runs_and_finishes_the_rest(tmp_path, monkeypatch):
    config = load_config(DEFAULT, TINY)
    work = str(tmp_path / "abl")
    rows, paths = ablation.ablate(config, work, depths="4,5", seeds=(0, 1), progress=False, log=lambda m: None)
    assert [r["variant"] for r in rows] == ["depth4", "depth5"] and all(r["seeds"] == [0, 1] for r in rows)
    assert rows[0]["trainable_params"] > rows[1]["trainable_params"] == 512 * 10 + 10
    for r in rows:
        assert 0 <= r["best_top1_min"] <= r["best_top1_mean"] <= r["best_top1_max"] <= 1
        assert r["wall_s"] > 0 and r["images_per_s"] > 0
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [t["variant"] for t in table] == ["depth4", "depth5"]
    assert os.path.getsize(paths["png"]) > 0 and open(paths["png"], "rb").read(4) == b"\x89PNG"
    first = json.load(open(paths["json"]))

    calls = []
    real_prepare = run.prepare

    def counting_prepare(cfg):          # called only for runs that actually train
        calls.append((cfg.freeze.frozen_depth, cfg.seed))
        return real_prepare(cfg)
    monkeypatch.setattr(run, "prepare", counting_prepare)

    again, _ = ablation.ablate(config, work, depths="4,5", seeds=(0, 1), progress=False, log=lambda m: None)
    assert calls == [] and again == rows and json.load(open(paths["json"])) == first

    # An unfinished run (no result.json) is the only one trained again, from its last checkpoint;
    # a new seed is added without touching the rest.
    os.remove(os.path.join(ablation.run_dir(work, ablation.variants(config, "5")[0], 1), RESULT))
    rows3, _ = ablation.ablate(config, work, depths="5", seeds=(1, 2), progress=False, log=lambda m: None)
    assert calls == [(5, 1), (5, 2)]
    resumed = RunDir(ablation.run_dir(work, ablation.variants(config, "5")[0], 1), {}).result()
    assert resumed["resumed_from"] == 2
    assert rows3[0]["seeds"] == [1, 2]

    # Finished runs trained with another config are refused, not silently reused.
    with pytest.raises(ConfigError, match=r"another config \(num_steps: 2 -> 3\)"):
        ablation.ablate(load_config(DEFAULT, {**TINY, "num_steps": 3}), work, depths="4", progress=False,
                        log=lambda m: None)


def test_runs_too_short_for_a_throughput_still_tabulate_and_plot(tmp_path):
    """One step each: no step runs after compilation, so there is no images/s to plot on a log axis."""
    config = load_config(DEFAULT, {**TINY, "num_steps": 1, "checkpoint_every_steps": 1})
    rows, paths = ablation.ablate(config, str(tmp_path), depths="5", scratch=True, progress=False,
                                  log=lambda m: None)
    assert [r["images_per_s"] for r in rows] == [None, None]
    assert open(paths["png"], "rb").read(4) == b"\x89PNG"
    assert "| n/a |" in ablation.format_table(rows)


def test_format_table_lists_every_variant():
    rows = [{"variant": "depth0", "note": "full fine-tune", "trainable_params": 1234, "best_top1_mean": 0.5,
             "best_top1_std": 0.1, "final_top1_mean": 0.4, "final_top1_std": 0.0, "images_per_s": None,
             "wall_s": 3.0}]
    text = ablation.format_table(rows)
    assert "| depth0 | full fine-tune | 1,234 | 50.0 ± 10.0 | 40.0 | n/a | 3.0 |" in text


def test_surgical_variants_train_one_stage_each_and_are_named_in_table_and_plot(tmp_path):
    config = load_config(DEFAULT, {**TINY, "num_steps": 2, "checkpoint_every_steps": 2})
    runs = [v for v in ablation.variants(config, "none", surgical=True) if v.name in ("only_layer1", "only_head")]
    results = ablation.run_all(config, str(tmp_path), runs, progress=False, log=lambda m: None)
    for r, stage in zip(results, ("layer1", "head")):
        info = json.load(open(os.path.join(r["workdir"], "run.json")))
        assert [s for s in info["stage_names"] if s not in info["frozen_stages"]] == [stage]
    rows = ablation.summarize(results)
    paths = ablation.write_outputs(rows, results, str(tmp_path))
    text = ablation.format_table(rows)
    assert "| only_layer1 | only layer1 trains |" in text and "| only_head | only head trains |" in text
    assert rows[0]["trainable_params"] == 147_968 and rows[1]["trainable_params"] == 5_130
    assert open(paths["png"], "rb").read(4) == b"\x89PNG"
