"""Sweeps: K members trained in one program end where K separate ``train`` runs end; outputs, resume,
refused fields, and the same numbers under data parallelism and with the members split over devices."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tl_jax import members
from tl_jax.experiment import ablation, restore, run, sweep
from tl_jax.experiment.config import ConfigError, load_config, override
from tl_jax.tree import flat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "default.py")
# ResNet-18 from a random init on 8x8 digits: trainable BatchNorm in every suffix but the head's. Evaluated on
# 360 digits (two eval batches, the last one padded): every check compares evaluations, none needs more images.
TINY = {"data.source": "digits", "data.train_split": "all[:20%]", "data.eval_split": "all[20%:40%]",
        "data.image_size": 8, "data.resize_size": 8, "data.min_crop_area": 1.0, "model.arch": "resnet18",
        "model.dtype": "float32", "batch_size": 16, "eval_batch_size": 240, "num_steps": 4, "log_every_steps": 2,
        "checkpoint_every_steps": 2, "eval_every_epochs": 0, "parallel": "none", "tensorboard": False}
EVAL = 360
CASES = {  # frozen stages -> (extra config, swept fields): two members each, every member checked
    "full": ({"optim.learning_rate": 0.01}, {"seed": [0, 1]}),         # per-member initial variables
    # surgical: stem+layer1+layer2 computed once per batch; layer4 and the head frozen but run per member
    "only_layer3": ({"freeze.trainable_stages": ("layer3",), "optim.name": "adamw", "optim.learning_rate": 3e-3},
                    {"optim.weight_decay": [0.0, 0.05]}),
    "head_only": ({"freeze.frozen_depth": 5, "label_smoothing": 0.2},
                  {"optim.momentum": [0.0, 0.9]}),                     # a part of the chain that one member lacks
}


def _config(depth: int | str, **extra):
    """A depth, or the name of a case."""
    if isinstance(depth, str):
        return load_config(DEFAULT, {**TINY, **CASES[depth][0], **extra})
    return load_config(DEFAULT, {**TINY, "freeze.frozen_depth": depth, **extra})


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(np.asarray(b, np.float64)), 1e-12))


def _members_against_separate_runs(config, fields, batching, tmp_path) -> None:
    config = override(config, {"checkpoint_every_steps": config.num_steps})   # one each, the end's (restored below)
    exp, sw, values = sweep.build(config, fields, batching=batching)
    assert len(sw.members) == int(np.prod([len(v) for v in fields.values()]))
    res = members.fit(sw, str(tmp_path / "sweep"), log=lambda r: None)
    for i, v in enumerate(values):
        d = str(tmp_path / f"run{i}")
        result = run.train(sweep.member_config(config, v), d, progress=False, echo=False)   # train.py's path
        ref = flat(restore.restore_run(d).variables)
        got = flat(res.member_variables(i))
        assert ref.keys() == got.keys()
        worst = max(_rel(got[k], ref[k]) for k in ref)
        print(f"\nmember {v}: worst relative difference to its train.py run {worst:.1e}")
        assert worst <= 1e-5, (v, worst)
        final = res.final_evals[i]
        assert final["count"] == result["final_eval"]["count"] == EVAL
        assert final["top1"] == pytest.approx(result["final_eval"]["top1"], abs=1 / EVAL + 1e-9)
        assert final["loss"] == pytest.approx(result["final_eval"]["loss"], rel=1e-4)
    # the members really differ: the sweep is not K copies of one run
    a, b = flat(res.member_variables(0)), flat(res.member_variables(len(values) - 1))
    assert any(not np.allclose(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", CASES)
def test_each_vmapped_member_ends_where_a_separate_train_run_ends(case, tmp_path):
    """The default (vmap) computes each member's run. Arithmetic in float64 (parameters and BatchNorm
    statistics stay float32): in float32 the batched convolutions sum in another order and this chaotic
    toy amplifies the last bits (a 1e-6 change of the initial parameters moves a single run by 1e-2),
    which would hide the difference between a wrong program and a reordered sum."""
    with jax.enable_x64(True):
        _members_against_separate_runs(_config(case, **{"model.dtype": "float64"}), CASES[case][1], "vmap",
                                       tmp_path)


def test_the_member_loop_repeats_separate_float32_runs(tmp_path):
    """``--batching loop`` replays a single run's float32 operations, full fine-tune with trainable BatchNorm."""
    _members_against_separate_runs(_config("full"), {"optim.learning_rate": [0.01, 0.003]}, "loop", tmp_path)


def test_outputs_resume_and_a_restart_with_other_values_is_refused(tmp_path):
    config, fields = _config(5), {"optim.learning_rate": [0.1, 0.01], "label_smoothing": [0.0, 0.1]}
    work, ref = str(tmp_path / "cut"), str(tmp_path / "whole")
    whole = sweep.run(config, ref, fields, echo=False)
    part = sweep.run(config, work, fields, stop_at_step=2, echo=False)
    assert part == {"finished": False, "step": 2, "num_steps": 4}
    resumed = sweep.run(config, work, fields, echo=False)
    assert resumed["resumed_from"] == 2
    for a, b in zip(resumed["members"], whole["members"]):
        assert a["final_eval_top1"] == b["final_eval_top1"] and a["final_train_loss"] == pytest.approx(
            b["final_train_loss"], rel=1e-6)
    rows = resumed["members"]
    assert [(r["optim.learning_rate"], r["label_smoothing"]) for r in rows] == [
        (0.1, 0.0), (0.1, 0.1), (0.01, 0.0), (0.01, 0.1)]
    assert all(r["eval_count"] == EVAL and 0 <= r["best_eval_top1"] <= 1 for r in rows)
    with open(os.path.join(work, "sweep.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {"optim.learning_rate", "label_smoothing", "best_eval_top1"} <= set(table[0])
    assert open(os.path.join(work, "sweep.png"), "rb").read(4) == b"\x89PNG"
    assert json.load(open(os.path.join(work, "sweep.json")))["num_members"] == 4
    assert sweep.run(config, work, fields, echo=False) == resumed          # finished: reported, not retrained
    with pytest.raises(ConfigError, match="holds a run of other values"):
        sweep.run(config, work, {"optim.learning_rate": [0.1, 0.02], "label_smoothing": [0.0, 0.1]}, echo=False)


@pytest.mark.parametrize("spec, match", [
    ("freeze.frozen_depth=0,4", "changes the computation's shape"),
    ("model.arch=resnet50", "changes the computation's shape"),
    ("batch_size=8,16", "changes the computation's shape"),
    ("data.image_size=8,16", "changes the computation's shape"),
    ("optim.grad_clip_norm=0,1", "not sweepable in one program"),
    ("optim.learning_rat=0.1", "no field 'optim.learning_rat'; did you mean optim.learning_rate"),
    ("optim.learning_rate", "use FIELD=V1,V2"),
    ("seed=a,b", "values must be ints"),
])
def test_fields_that_change_the_graph_are_refused_in_one_line(spec, match):
    with pytest.raises(ConfigError, match=match) as e:
        sweep.parse([spec], _config(5))
    assert "\n" not in str(e.value)


def test_a_member_whose_loss_turns_non_finite_is_dropped_and_the_others_finish(tmp_path):
    """The loop's policy, the same for one run (which then stops): the member is reported and dropped."""
    config, fields = _config(5), {"optim.learning_rate": [0.01, 1e30]}
    summary = sweep.run(config, str(tmp_path / "s"), fields, echo=False)
    good, bad = summary["members"]
    assert bad["diverged"] and bad["final_eval_top1"] is None and bad["final_train_loss"] is None
    assert not good["diverged"] and good["eval_count"] == EVAL and 0 < good["final_eval_top1"] <= 1
    records = [json.loads(line) for line in open(tmp_path / "s" / "metrics.jsonl")]
    dropped = [r for r in records if r.get("event") == "dropped"]
    assert len(dropped) == 1 and dropped[0]["members"] == [1]
    alone = _config(5, **{"optim.learning_rate": 1e30})
    with pytest.raises(FloatingPointError, match="non-finite training loss at step"):
        run.train(alone, str(tmp_path / "one"), progress=False, echo=False)


def test_a_seed_sweep_from_a_random_init_needs_depth_0():
    with pytest.raises(ConfigError, match="changes the frozen stages too"):
        sweep.build(_config(4), {"seed": [0, 1]})


def test_ablation_runs_a_sweep_at_each_depth(tmp_path):
    config = _config(5, **{"num_steps": 2})
    rows, paths = ablation.ablate(config, str(tmp_path), depths="4,5", sweep_fields={"optim.learning_rate": [0.01, 0.001]},
                                  progress=False, log=lambda m: None)
    assert [r["variant"] for r in rows] == ["depth4", "depth5"]
    data = json.load(open(paths["json"]))
    assert [len(r["members"]) for r in data["sweeps"]] == [2, 2]
    best = data["sweeps"][0]["members"]
    assert rows[0]["best_top1_max"] == max(m["best_eval_top1"] for m in best)


_PARALLEL = r"""
import json, sys, numpy as np
from tl_jax import members
from tl_jax.experiment import sweep
from tl_jax.experiment.config import load_config
from tl_jax.tree import flat
cfg = json.loads(sys.argv[1]); fields = {"optim.learning_rate": [0.01, 0.003], "label_smoothing": [0.1]}
arrays, evals = {}, {}
for name, parallel, shard in (("one", "none", False), ("shard_map", "shard_map", False), ("pmap", "pmap", False),
                              ("members", "none", True)):
    config = load_config(sys.argv[2], {**cfg, "parallel": parallel})
    _, sw, _ = sweep.build(config, fields, shard_members=shard)
    res = members.fit(sw, log=lambda r: None)
    for i in range(2):
        arrays.update({f"{name}|{i}|{k}": np.asarray(v) for k, v in flat(res.member_variables(i)).items()
                       if "layer4/block1/conv2" in k or "head" in k or "bn" in k})
    evals[name] = res.final_evals
np.savez(sys.argv[3], **arrays)   # the arrays as they are (JSON lists of 3M floats cost seconds each way)
print("RESULT" + json.dumps(evals))
"""


def test_data_parallel_and_member_sharding_give_the_same_members(tmp_path):
    """Two CPU devices: the batch split under shard_map and pmap (synced BatchNorm), or the members split."""
    cfg = {**TINY, "freeze.frozen_depth": 4, "num_steps": 3, "checkpoint_every_steps": 0}
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    saved = str(tmp_path / "members.npz")
    proc = subprocess.run([sys.executable, "-c", _PARALLEL, json.dumps(cfg), DEFAULT, saved], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = json.loads(proc.stdout.split("RESULT", 1)[1])
    arrays = np.load(saved)
    params = {}
    for key in arrays.files:
        name, i, k = key.split("|", 2)
        params.setdefault(name, [{}, {}])[int(i)][k] = arrays[key]
    one = params["one"]
    assert all(one[i] for i in range(2))
    for name in ("shard_map", "pmap", "members"):
        for i in range(2):
            assert params[name][i].keys() == one[i].keys()
            for k, v in one[i].items():
                assert _rel(params[name][i][k], v) <= 1e-4, (name, i, k)
            assert evals[name][i]["count"] == evals["one"][i]["count"] == EVAL
            assert evals[name][i]["top1"] == pytest.approx(evals["one"][i]["top1"], abs=2 / EVAL)


def test_the_script_refuses_a_graph_field_in_one_line():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sweep.py"), "--config", DEFAULT,
                           "--workdir", "/nonexistent/never", "--sweep", "freeze.frozen_depth=0,4"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "changes the computation's shape" in proc.stderr


def test_benchmark_record_at_toy_size():
    from tl_jax.bench import sweep_speed as bench

    r = bench.compare("resnet18", 5, k=2, batch=4, resolution=16, steps=3)
    assert r["members"] == 2 and r["batching"] == "vmap" and r["sweep_wall_s"] > 0 and r["steady_ratio"] > 0
    mem = r["memory"]
    assert mem["sweep"]["peak_bytes"] > 0 and mem["one_run"]["peak_bytes"] > 0


def test_sigterm_checkpoints_the_sweep_step_in_progress_and_the_same_command_resumes(tmp_path):
    work = str(tmp_path / "sweep")
    cfg = {**TINY, "freeze.frozen_depth": 5, "num_steps": 40, "log_every_steps": 1, "checkpoint_every_steps": 1000}
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "sweep.py"), "--config", DEFAULT, "--workdir", work,
           "--sweep", "optim.learning_rate=0.1,0.01", *[f"--config.{k}={v}" for k, v in cfg.items()]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        metrics, deadline = os.path.join(work, "metrics.jsonl"), time.time() + 300
        while not (os.path.exists(metrics) and '"split": "train"' in open(metrics).read()):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    line = err.strip().splitlines()[-1]
    step = int(line.split("preempted at step ")[1].split(";")[0])
    assert line == f"sweep.py: preempted at step {step}; run the same command to resume" and 1 <= step < 40
    assert os.path.isdir(os.path.join(work, "checkpoints", str(step)))
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.load(open(os.path.join(work, "sweep.json")))["resumed_from"] == step
