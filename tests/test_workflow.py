"""The research workflow end to end on small synthetic data: train -> evaluate -> predict -> export, resume.

A tiny ResNet-18 at 32 px on the synthetic source (no files, no TensorFlow). The resumed run
is compared with an uninterrupted one, never with numbers from our own earlier output.
"""
from __future__ import annotations

import json
import os
import struct

import jax
import numpy as np
import pytest
from PIL import Image

from tl_jax import preprocess
from tl_jax.experiment import config as config_lib
from tl_jax.experiment import logs, restore, run, setup
from tl_jax.experiment.rundir import RunDir
from tl_jax.tree import flat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "default.py")
TINY = {"data.source": "synthetic", "data.train_split": "train", "data.eval_split": "test",
        "data.num_examples": 32, "data.image_size": 32, "model.arch": "resnet18", "model.dtype": "float32",
        "batch_size": 8, "num_steps": 4, "log_every_steps": 1, "checkpoint_every_steps": 2,
        "eval_every_epochs": 1, "freeze.frozen_depth": 4, "parallel": "none"}


def _images(tmp_path, n=3) -> list[str]:
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


def test_train_evaluate_predict_export_and_resume(tmp_path):
    config = config_lib.load_config(DEFAULT, TINY)
    ref = run.train(config, str(tmp_path / "uninterrupted"), progress=False, echo=False)
    assert ref["finished"] and ref["resumed_from"] == 0 and ref["num_steps"] == 4
    # Throughput is measured whenever a step ran after compilation (it was null in most short runs).
    assert ref["images_per_s"] > 0 and ref["steps_per_s"] * 8 == pytest.approx(ref["images_per_s"])

    # --stop_at_step leaves with a checkpoint; the same call stops there again (and says so), a call
    # without it continues from that checkpoint.
    work = str(tmp_path / "run")
    assert run.train(config, work, progress=False, echo=False, stop_at_step=3) == \
        {"finished": False, "step": 3, "num_steps": 4}
    assert run.train(config, work, progress=False, echo=False, stop_at_step=3)["step"] == 3
    assert RunDir(work, {}).result() is None
    res = run.train(config, work, progress=False, echo=False)
    assert res["finished"] and res["resumed_from"] == 3
    events = [r.get("event") for r in logs.read_metrics(work)]
    assert events.count("session") == 3 and events.count("stopped") == 2 and "resumed" in events

    # The resumed run ends exactly where the uninterrupted one does.
    a, b = restore.restore_run(str(tmp_path / "uninterrupted")), restore.restore_run(work)
    assert a.step == b.step == 4
    fa, fb = flat(a.variables), flat(b.variables)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_allclose(fb[k], fa[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert res["final_eval"] == pytest.approx(ref["final_eval"], rel=1e-6)

    # Run files: resolved facts, metrics, TensorBoard.
    info = json.load(open(os.path.join(work, "run.json")))
    assert info["frozen_stages"] == ["stem", "layer1", "layer2", "layer3"] and info["num_classes"] == 10
    assert res["trainable_params"] + res["frozen_params"] == sum(x.size for x in jax.tree.leaves(a.variables["params"]))
    assert {"train/loss", "eval/top1", "eval/top5"} <= _tensorboard_tags(os.path.join(work, "tensorboard"))

    # Evaluation restores parameters and BatchNorm statistics only: it works on a run whose optimizer
    # configuration no longer builds, and reproduces the eval logged at the end of training.
    cfg_path = os.path.join(work, "config.json")
    stored = json.load(open(cfg_path))
    json.dump({**stored, "optim": {**stored["optim"], "name": "no_such_optimizer"}}, open(cfg_path, "w"))
    ev = restore.evaluate_run(work, "best")
    assert ev["checkpoint_step"] == 4 and ev["count"] == 32
    assert ev["top1"] == pytest.approx(res["final_eval"]["top1"]) and ev["loss"] == pytest.approx(
        res["final_eval"]["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="no checkpoint at step 3; it has steps 2, 4"):
        restore.restore_run(str(tmp_path / "uninterrupted"), 3)
    json.dump(stored, open(cfg_path, "w"))

    # predict: top-k names from the training data, probabilities sorted, = the model's softmax; an
    # unreadable file is reported and the others still classified.
    paths = _images(tmp_path)
    broken = str(tmp_path / "broken.jpg")
    open(broken, "wb").write(open(paths[0], "rb").read()[:40])
    preds = restore.predict([paths[0], broken, *paths[1:]], top_k=3, workdir=work)
    assert [p["image"] for p in preds] == [paths[0], broken, *paths[1:]]
    assert "cannot read image" in preds[1]["error"] and "top_k" not in preds[1]
    big, limit = str(tmp_path / "big.png"), Image.MAX_IMAGE_PIXELS   # PIL's decompression-bomb refusal, scaled down
    Image.new("RGB", (64, 64)).save(big)
    Image.MAX_IMAGE_PIXELS = 1000
    try:
        assert "cannot read image" in restore.predict([big], workdir=work)[0]["error"]
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    preds = [preds[0], *preds[2:]]
    model, variables, spec, names = restore.load_for_prediction(workdir=work)
    x = np.stack([preprocess.prepare(Image.open(p), spec) for p in paths])
    probs = np.asarray(jax.nn.softmax(model.apply(variables, x, train=False)))
    for p, row in zip(preds, probs):
        top = p["top_k"]
        assert len(top) == 3 and [t["class"] for t in top] == [names[i] for i in np.argsort(-row)[:3]]
        np.testing.assert_allclose([t["prob"] for t in top], np.sort(row)[::-1][:3], rtol=1e-5)

    # export: the run as a weights store (the converted-weights format) predicts the same.
    store = restore.export(work, str(tmp_path / "store"), "best")
    meta = json.load(open(os.path.join(store, "metadata.json")))
    assert meta["class_names"] == names and meta["input_size"] == 32 and meta["num_classes"] == 10
    again = restore.predict(paths, top_k=3, weights=store)
    for p, q in zip(preds, again):
        assert [t["class"] for t in p["top_k"]] == [t["class"] for t in q["top_k"]]
        np.testing.assert_allclose([t["prob"] for t in q["top_k"]], [t["prob"] for t in p["top_k"]], rtol=1e-5)

    # A finished run is reported, not retrained; another config is refused.
    assert run.train(config, work, progress=False, echo=False) == RunDir(work, {}).result()
    with pytest.raises(config_lib.ConfigError, match="another config"):
        run.train(config_lib.override(config, {"optim.learning_rate": 0.5}), work, progress=False, echo=False)


def test_overrides_name_the_field_they_meant():
    config = config_lib.load_config(DEFAULT)
    with pytest.raises(config_lib.ConfigError, match=r"no field 'frozen_depth'; did you mean freeze.frozen_depth"):
        config_lib.override(config, {"frozen_depth": 2})
    with pytest.raises(config_lib.ConfigError, match=r"did you mean optim.learning_rate"):
        config_lib.override(config, {"optim.learning_rat": 0.1})


def test_missing_weights_name_the_command_that_makes_them_and_the_field():
    config = config_lib.load_config(os.path.join(ROOT, "configs", "resnet50_tf_flowers.py"),
                                    {"weights": "weights/never_converted"})
    with pytest.raises(FileNotFoundError, match=r"no converted weights at 'weights/never_converted' \(config field "
                                                r"weights\).*convert_weights.py --arch ARCH --source SOURCE --output "
                                                r"weights/never_converted.*--config.weights=''"):
        setup.weights_metadata(config)
