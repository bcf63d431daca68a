"""Which stage's features are good enough to freeze up to? A closed-form ridge probe on every stage.

The frozen backbone runs once over the labelled pool and the evaluation split; each stage's
output is global-average-pooled. For every (shots per class, seed) a ridge classifier is fitted
per stage in closed form (one-hot targets, centred features and targets, so the intercept is
implicit: the estimator of ``sklearn.linear_model.Ridge(fit_intercept=True)``), its
regularisation chosen by exact leave-one-out accuracy on the labelled examples (the hat-matrix
identity; with one label per class nothing can be left out, so the middle of the grid is used),
and scored on the evaluation split. Features are cached in the output directory, so a second
call with other shots or seeds takes seconds.

A stage probe answers "how linearly separable are the target classes after stage k", the
question behind ``frozen_depth = k + 1`` with only the head above it; fine-tuning the stages
above can still beat it, which is why the ablation exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from tl_jax.data import make_dataset
from tl_jax.experiment.rundir import write_json
from tl_jax.weights import store

LAMBDAS = tuple(10.0 ** k for k in range(-3, 4))     # times the number of labelled examples
FEATURES = "stage_features.npz"


def ridge_fit(x: np.ndarray, y: np.ndarray, num_classes: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(weights (d, classes), bias (classes,)) of ridge regression on one-hot ``y`` with intercept.

    Solved in the dual (``n`` labelled examples are far fewer than feature channels):
    ``W = Xc^T (Xc Xc^T + lam I)^-1 Yc``.
    """
    targets = np.eye(num_classes)[y]
    mx, my = x.mean(0), targets.mean(0)
    xc, yc = x - mx, targets - my
    alpha = np.linalg.solve(xc @ xc.T + lam * np.eye(len(x)), yc)
    w = xc.T @ alpha
    return w, my - mx @ w


def loo_accuracy(x: np.ndarray, y: np.ndarray, num_classes: int, lam: float) -> float:
    """Exact leave-one-out accuracy of :func:`ridge_fit`, without refitting.

    Ridge with an unpenalised intercept is a linear smoother with hat matrix
    ``H = 11^T / n + K (K + lam I)^-1`` (``K = Xc Xc^T``), and for such a smoother the prediction
    for example i of the fit without it is ``y_i - (y_i - (H y)_i) / (1 - H_ii)``.
    """
    n = len(y)
    targets = np.eye(num_classes)[y]
    xc = x - x.mean(0)
    k = xc @ xc.T
    hat = np.full((n, n), 1.0 / n) + k @ np.linalg.inv(k + lam * np.eye(n))
    residual = (targets - hat @ targets) / np.maximum(1.0 - np.diag(hat), 1e-12)[:, None]
    return float(((targets - residual).argmax(1) == y).mean())


def choose_lambda(x: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """The grid value with the best leave-one-out accuracy (ties: the larger); n * 1 without two labels per class."""
    n = len(y)
    if np.bincount(y, minlength=num_classes).min() < 2:
        return float(n)
    scores = [(loo_accuracy(x, y, num_classes, lam * n), lam * n) for lam in LAMBDAS]
    return max(scores)[1]


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray,
                   num_classes: int) -> tuple[float, float]:
    """(eval top-1, chosen lambda) of a ridge probe; features scaled by the labelled set's RMS."""
    scale = np.sqrt(np.mean((train_x - train_x.mean(0)) ** 2)) or 1.0
    a, b = train_x / scale, eval_x / scale
    lam = choose_lambda(a, train_y, num_classes)
    w, bias = ridge_fit(a, train_y, num_classes, lam)
    return float(((b @ w + bias).argmax(1) == eval_y).mean()), lam


def stage_features(weights: str, source: str, splits: Sequence[str], *, image_size: int | None = None,
                   batch_size: int = 64, options: dict[str, Any] | None = None, cache_dir: str | None = None,
                   ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray], list[str], float]:
    """``({split: {stage: pooled features}}, {split: labels}, stage names, seconds)``: the backbone runs once."""
    with open(os.path.join(weights, store.METADATA), "rb") as f:   # changes whenever the store is rewritten
        digest = hashlib.sha256(f.read()).hexdigest()
    key = json.dumps({"weights": os.path.abspath(weights), "metadata_sha256": digest, "source": source,
                      "splits": list(splits), "image_size": image_size, "options": options or {}}, sort_keys=True)
    path = os.path.join(cache_dir, FEATURES) if cache_dir else None
    if path and os.path.isfile(path):
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                stages = [str(s) for s in z["stages"]]
                feats = {sp: {st: z[f"{sp}/{st}"] for st in stages} for sp in splits}
                return feats, {sp: z[f"{sp}/labels"] for sp in splits}, stages, 0.0
    t0 = time.perf_counter()
    model, variables, meta = store.load_pretrained(weights)
    stages = list(meta["stage_names"][:-1])
    forward = jax.jit(lambda v, x: {k: v_.mean(axis=(1, 2)) if v_.ndim == 4 else v_
                                    for k, v_ in model.apply(v, x, return_stages=True).items() if k in stages})
    feats, labels = {}, {}
    for sp in splits:
        data = make_dataset(source, sp, batch_size=batch_size, train=False, preprocessing=meta["preprocessing"],
                            image_size=image_size or int(meta["input_size"]), **(options or {}))
        parts, ys = [], []
        for batch in data.batches(0):
            keep = batch["mask"] > 0
            out = jax.device_get(forward(variables, batch["image"]))
            parts.append({k: np.asarray(v, np.float32)[keep] for k, v in out.items()})
            ys.append(batch["label"][keep])
        feats[sp] = {st: np.concatenate([p[st] for p in parts]) for st in stages}
        labels[sp] = np.concatenate(ys)
    seconds = time.perf_counter() - t0
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        arrays = {f"{sp}/{st}": feats[sp][st] for sp in splits for st in stages}
        arrays.update({f"{sp}/labels": labels[sp] for sp in splits})
        tmp = f"{path[:-4]}.tmp-{os.getpid()}.npz"
        np.savez(tmp, key=np.asarray(key), stages=np.asarray(stages), **arrays)
        os.replace(tmp, path)
    return feats, labels, stages, seconds


def sample_shots(labels: np.ndarray, shots: int | None, seed: int) -> np.ndarray:
    """Indices of ``shots`` labelled examples per class (``None``: all), drawn with ``seed``."""
    if shots is None:
        return np.arange(len(labels))
    rng = np.random.default_rng((seed, 11))
    picked = []
    for c in np.unique(labels):
        of_class = np.flatnonzero(labels == c)
        if len(of_class) < shots:
            raise ValueError(f"class {c} has only {len(of_class)} labelled examples, fewer than {shots} shots")
        picked.append(rng.permutation(of_class)[:shots])
    return np.sort(np.concatenate(picked))


def probe_stages(weights: str, source: str, *, train_split: str = "train", eval_split: str = "test",
                 shots: Sequence[int | None] = (1, 5, 10), seeds: Sequence[int] = (0,), image_size: int | None = None,
                 output: str | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Top-1 of a ridge probe on every stage, per shot count (mean and spread over seeds); writes probe.json/png."""
    feats, labels, stages, extract_s = stage_features(weights, source, [train_split, eval_split],
                                                      image_size=image_size, options=options, cache_dir=output)
    num_classes = int(max(labels[train_split].max(), labels[eval_split].max())) + 1
    t0 = time.perf_counter()
    rows = []
    for k in shots:
        for stage in stages:
            scores, lams = [], []
            for seed in seeds:
                idx = sample_shots(labels[train_split], k, seed)
                acc, lam = probe_accuracy(feats[train_split][stage][idx], labels[train_split][idx],
                                          feats[eval_split][stage], labels[eval_split], num_classes)
                scores.append(acc)
                lams.append(lam)
            rows.append({"shots": "all" if k is None else int(k), "stage": stage, "stage_index": stages.index(stage),
                         "top1_mean": float(np.mean(scores)), "top1_std": float(np.std(scores, ddof=1))
                         if len(scores) > 1 else 0.0, "seeds": list(seeds), "lambdas": lams,
                         "dims": int(feats[eval_split][stage].shape[1])})
    report = {"weights": os.path.abspath(weights), "data": source, "train_split": train_split,
              "eval_split": eval_split, "num_eval": int(len(labels[eval_split])), "stages": stages, "rows": rows,
              "extract_s": round(extract_s, 3), "probe_s": round(time.perf_counter() - t0, 3)}
    if output:
        os.makedirs(output, exist_ok=True)
        plot(report, os.path.join(output, "probe.png"))
        write_json(os.path.join(output, "probe.json"), report)
    return report


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    stages = report["stages"]
    for shots in dict.fromkeys(r["shots"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["shots"] == shots]
        ax.errorbar(range(len(rows)), [100 * r["top1_mean"] for r in rows], yerr=[100 * r["top1_std"] for r in rows],
                    marker="o", capsize=3, label=f"{shots} label{'s' if shots != 1 else ''}/class")
    ax.set_xticks(range(len(stages)), stages)
    ax.set_xlabel("features after stage")
    ax.set_ylabel("ridge probe top-1 (%)")
    ax.set_title(f"stage probe: {os.path.basename(report['weights'])} on {report['data']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x):
        x = np.asarray(x, float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def format_table(report: dict[str, Any]) -> str:
    """Markdown table: one row per stage, one column per shot count."""
    shots = list(dict.fromkeys(r["shots"] for r in report["rows"]))
    cell = {(r["shots"], r["stage"]): r for r in report["rows"]}
    lines = ["| features after | dims | " + " | ".join(f"{k} shots" for k in shots) + " |",
             "|---|---:|" + "---:|" * len(shots)]
    for stage in report["stages"]:
        row = [cell[(k, stage)] for k in shots]
        lines.append(f"| {stage} | {row[0]['dims']} | " + " | ".join(
            f"{100 * r['top1_mean']:.1f}" + (f" ± {100 * r['top1_std']:.1f}" if r["top1_std"] else "") for r in row)
            + " |")
    return "\n".join(lines)
