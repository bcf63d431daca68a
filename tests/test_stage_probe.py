"""The stage probe: its closed-form ridge is scikit-learn's, its model choice is exact leave-one-out, it
ranks a separable stage above a useless one, and it runs on a converted torchvision file."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import references as R
from tl_jax.experiment import stage_probe
from tl_jax.weights import importer


def _features(seed: int, n_per_class: int, classes: int, dims: int, separation: float) -> tuple:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dims)) * separation
    y = np.repeat(np.arange(classes), n_per_class)
    return centres[y] + rng.standard_normal((len(y), dims)), y


def test_ridge_is_sklearn_ridge_with_intercept_on_one_hot_targets():
    from sklearn.linear_model import Ridge

    x, y = _features(0, 4, 5, 30, 1.0)
    for lam in (0.1, 3.0, 100.0):
        w, b = stage_probe.ridge_fit(x, y, 5, lam)
        ref = Ridge(alpha=lam, fit_intercept=True).fit(x, np.eye(5)[y])
        np.testing.assert_allclose(w, ref.coef_.T, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(b, ref.intercept_, rtol=1e-6, atol=1e-9)


def test_leave_one_out_accuracy_equals_refitting_without_each_example():
    x, y = _features(1, 3, 4, 12, 0.7)
    for lam in (0.5, 5.0):
        refits = []
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            w, b = stage_probe.ridge_fit(x[keep], y[keep], 4, lam)
            refits.append((x[i] @ w + b).argmax() == y[i])
        assert stage_probe.loo_accuracy(x, y, 4, lam) == pytest.approx(np.mean(refits))


def test_a_stage_that_separates_the_classes_scores_higher_than_one_that_does_not():
    train_x, train_y = _features(2, 5, 10, 64, 3.0)
    eval_x, eval_y = _features(2, 50, 10, 64, 3.0)          # same centres (same seed), new noise
    noise = np.random.default_rng(3)
    good, lam = stage_probe.probe_accuracy(train_x, train_y, eval_x, eval_y, 10)
    bad, _ = stage_probe.probe_accuracy(noise.standard_normal(train_x.shape), train_y,
                                        noise.standard_normal(eval_x.shape), eval_y, 10)
    assert good > 0.9 and bad < 0.25 and lam in [v * len(train_y) for v in stage_probe.LAMBDAS]
    assert stage_probe.spearman([0.2, 0.5, 0.9], [0.1, 0.3, 0.8]) == 1.0
    assert stage_probe.spearman([0.2, 0.5, 0.9], [0.8, 0.3, 0.1]) == -1.0


def test_probe_stages_on_a_converted_torchvision_file(tmp_path):
    path = str(tmp_path / "resnet18.pth")
    R.torchvision_reference("resnet18", path, seed=4)
    store = str(tmp_path / "store")
    importer.convert_weights("resnet18", "torchvision", store, path)
    out = str(tmp_path / "probe")
    report = stage_probe.probe_stages(store, "digits", train_split="all[:20%]", eval_split="all[20%:]",
                                      shots=[1, 3], seeds=[0, 1], image_size=32, output=out)
    assert report["stages"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert [(r["shots"], r["stage"]) for r in report["rows"]][:2] == [(1, "stem"), (1, "layer1")]
    assert report["num_eval"] == 1438 and len(report["rows"]) == 10
    assert [r["dims"] for r in report["rows"][:5]] == [64, 64, 128, 256, 512]
    assert all(0.0 <= r["top1_mean"] <= 1.0 for r in report["rows"])
    assert json.load(open(os.path.join(out, "probe.json")))["rows"] == json.loads(json.dumps(report["rows"]))
    assert open(os.path.join(out, "probe.png"), "rb").read(4) == b"\x89PNG"
    again = stage_probe.probe_stages(store, "digits", train_split="all[:20%]", eval_split="all[20%:]",
                                     shots=[1, 3], seeds=[0, 1], image_size=32, output=out)
    assert again["extract_s"] == 0.0 and again["rows"] == report["rows"]     # the backbone did not run again
    assert "| layer4 | 512 |" in stage_probe.format_table(report)
