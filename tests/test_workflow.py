"""The research workflow end to end on small synthetic data: train -> evaluate -> predict, resume, CLIs.

A tiny ResNet-18 at 32 px on the synthetic source (no files, no TensorFlow). The resumed run
is compared with an uninterrupted one, never with numbers from our own earlier output.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from tl_jax import experiment
from tl_jax.freeze import path_str

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "default.py")
TINY = {"data.source": "synthetic", "data.train_split": "train", "data.eval_split": "test",
        "data.num_examples": 32, "data.image_size": 32, "model.arch": "resnet18", "model.dtype": "float32",
        "batch_size": 8, "num_steps": 4, "log_every_steps": 1, "checkpoint_every_steps": 2,
        "eval_every_epochs": 1, "freeze.frozen_depth": 4, "parallel": "none"}
CLI_TINY = [f"--config.{k}={v}" for k, v in {**TINY, "num_steps": 2, "freeze.frozen_depth": 5}.items()]


def _flat(tree) -> dict[str, np.ndarray]:
    return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _images(tmp_path, n=3) -> list[str]:
    from PIL import Image

    paths = []
    for i in range(n):
        p = str(tmp_path / f"img{i}.png")
        Image.fromarray(np.random.RandomState(i).randint(0, 256, (40, 48, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _tensorboard_tags(logdir: str) -> set[str]:
    """Read the event file record by record (length, crc, Event proto, crc)."""
    from tensorboard.compat.proto.event_pb2 import Event

    tags = set()
    for name in os.listdir(logdir):
        data = open(os.path.join(logdir, name), "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = Event.FromString(data[i + 12:i + 12 + n])
            tags.update(v.tag for v in ev.summary.value)
            i += 12 + n + 4
    return tags


def test_train_evaluate_predict_and_resume_in_the_same_workdir(tmp_path):
    config = experiment.load_config(DEFAULT, TINY)
    ref = experiment.train(config, str(tmp_path / "uninterrupted"), progress=False, echo=False)
    assert ref["finished"] and ref["resumed_from"] == 0 and ref["num_steps"] == 4

    work = str(tmp_path / "run")
    part = experiment.train(config, work, progress=False, echo=False, stop_at_step=2)
    assert part == {"finished": False, "step": 2}
    assert experiment.read_result(work) is None
    res = experiment.train(config, work, progress=False, echo=False)
    assert res["finished"] and res["resumed_from"] == 2
    events = [r.get("event") for r in experiment.read_metrics(work)]
    assert events.count("session") == 2 and "resumed" in events and "stopped" in events

    # The resumed run ends exactly where the uninterrupted one does.
    a = experiment.restore_run(str(tmp_path / "uninterrupted"))
    b = experiment.restore_run(work)
    assert a.step == b.step == 4
    fa, fb = _flat(a.variables), _flat(b.variables)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_allclose(fb[k], fa[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert res["final_eval"] == pytest.approx(ref["final_eval"], rel=1e-6)

    # Run files: resolved facts, metrics, TensorBoard.
    run = json.load(open(os.path.join(work, "run.json")))
    assert run["frozen_stages"] == ["stem", "layer1", "layer2", "layer3"] and run["num_classes"] == 10
    assert res["trainable_params"] + res["frozen_params"] == sum(x.size for x in jax.tree.leaves(a.variables["params"]))
    assert {"train/loss", "eval/top1", "eval/top5"} <= _tensorboard_tags(os.path.join(work, "tensorboard"))

    # evaluate: the checkpoint on the eval split reproduces the eval logged at the end of training.
    ev = experiment.evaluate_run(work, "best")
    assert ev["checkpoint_step"] == 4 and ev["count"] == 32
    assert ev["top1"] == pytest.approx(res["final_eval"]["top1"]) and ev["loss"] == pytest.approx(
        res["final_eval"]["loss"], rel=1e-5)

    # predict: top-k names from the training data, probabilities sorted, = the model's softmax.
    paths = _images(tmp_path)
    preds = experiment.predict(paths, top_k=3, workdir=work)
    assert [p["image"] for p in preds] == paths
    model, variables, spec, names = experiment.load_for_prediction(workdir=work)
    from PIL import Image
    from tl_jax import preprocess
    x = np.stack([preprocess.prepare(Image.open(p), spec) for p in paths])
    probs = np.asarray(jax.nn.softmax(model.apply(variables, x, train=False)))
    for p, row in zip(preds, probs):
        top = p["top_k"]
        assert len(top) == 3 and [t["class"] for t in top] == [names[i] for i in np.argsort(-row)[:3]]
        np.testing.assert_allclose([t["prob"] for t in top], np.sort(row)[::-1][:3], rtol=1e-5)

    # export: the run as a weights store (the converted-weights format) predicts the same.
    store = experiment.export(work, str(tmp_path / "store"), "best")
    meta = json.load(open(os.path.join(store, "metadata.json")))
    assert meta["class_names"] == names and meta["input_size"] == 32 and meta["num_classes"] == 10
    again = experiment.predict(paths, top_k=3, weights=store)
    for p, q in zip(preds, again):
        assert [t["class"] for t in p["top_k"]] == [t["class"] for t in q["top_k"]]
        np.testing.assert_allclose([t["prob"] for t in q["top_k"]], [t["prob"] for t in p["top_k"]], rtol=1e-5)

    # A finished run is reported, not retrained; another config is refused.
    assert experiment.train(config, work, progress=False, echo=False) == experiment.read_result(work)
    with pytest.raises(ValueError, match="another config"):
        experiment.train(experiment.override(config, {"optim.learning_rate": 0.5}), work, progress=False,
                         echo=False)


def _script(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_scripts_train_evaluate_and_predict(tmp_path):
    work = str(tmp_path / "run")
    _script("train.py", "--config", DEFAULT, "--workdir", work, "--progress=off", *CLI_TINY)
    result = experiment.read_result(work)
    assert result["finished"] and result["frozen_depth"] == 5 and result["trainable_params"] == 512 * 10 + 10
    out = str(tmp_path / "eval.json")
    proc = _script("evaluate.py", "--workdir", work, "--checkpoint", "latest", "--output", out)
    ev = json.load(open(out))
    assert json.loads(proc.stdout) == ev and ev["top1"] == pytest.approx(result["final_eval_top1"])
    images = _images(tmp_path, 2)
    proc = _script("predict.py", "--workdir", work, "--top_k", "2", *images)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(tuple(images))]
    assert len(lines) == 2 and all("class_" in line for line in lines)


@pytest.mark.parametrize("kind", ["shard_map", "pmap"])
def test_train_script_on_four_cpu_devices(tmp_path, kind):
    work = str(tmp_path / kind)
    _script("train.py", "--config", DEFAULT, "--workdir", work, "--progress=off", *CLI_TINY,
            f"--config.parallel={kind}", "--config.freeze.frozen_depth=4",
            env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    records = experiment.read_metrics(work)
    start = next(r for r in records if r.get("event") == "start")
    assert start["devices"] == 4
    assert experiment.read_result(work)["final_eval"]["count"] == 32
