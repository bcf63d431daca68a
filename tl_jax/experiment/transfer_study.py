"""Transferability studies offline, one command each: Yosinski et al. (2014) Figure 2, and surgical fine-tuning.

``yosinski`` (Yosinski, Clune, Bengio, Lipson, "How transferable are features in deep neural
networks?", NIPS 2014): the 62 glyph classes split into two disjoint halves A and B by a fixed
seeded shuffle; baseA and baseB trained from scratch on their half; then for n = 1..5 (stem,
layer1, ..., layer4 copied) a new network gets the first n stages of baseB (BnB) or baseA (AnB), the
rest re-initialised with torchvision's initialisers (``freeze.reinit_from``), and trains on B with the
copied stages frozen (BnB, AnB; from cached activations) or fine-tuned (BnB+, AnB+), for as many
steps as a base. Metric: top-1 on B's held-out glyphs.

``surgical`` (Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts", ICLR
2023): the quickstart's source network (all 62 classes, 8x8) fine-tuned on a shifted copy of its task
with a few labels, once per single trainable stage (the rest frozen, BatchNorm on running averages),
with everything trainable, and with LP-FT (Kumar et al., ICLR 2022): an input-level shift (inverted
ink) and an output-level shift (a fixed permutation of the labels).

Every run is an ordinary ``train`` run in ``WORKDIR/runs/``: finished runs are reported, interrupted
ones resume. Outputs: ``study.json`` (every run and the summary), ``study.csv`` (one row per run:
treatment, n or trained stage, seed, top-1, steps, wall time) and ``study.png``.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np

from tl_jax.data import glyphs
from tl_jax.experiment import restore, run
from tl_jax.experiment.config import load_config, override
from tl_jax.experiment.rundir import write_json

STUDIES = ("yosinski", "surgical")
TREATMENTS = ("BnB", "BnB+", "AnB", "AnB+")
RUNS, STORES = "runs", "weights"


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run of a study: its directory name, its config overrides and its table fields."""
    name: str
    overrides: dict[str, Any]
    fields: dict[str, Any]


def class_split(seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Halves A and B of the 62 glyph classes (a fixed seeded shuffle; each half in class order)."""
    order = np.random.default_rng((seed, 62)).permutation(len(glyphs.CHARACTERS))
    half = len(order) // 2
    return tuple(sorted(int(c) for c in order[:half])), tuple(sorted(int(c) for c in order[half:]))


def _train(config: Any, directory: str, job: Job, log: Callable[[str], None], progress: bool | None) -> dict:
    finished = os.path.isfile(os.path.join(directory, "result.json"))
    log(f"    {job.name}: " + ("finished earlier" if finished else "training"))
    res = run.train(override(config, job.overrides), directory, progress=progress, echo=False)
    if not res.get("finished"):
        raise RuntimeError(f"run {directory} did not finish: {res}")
    return {**job.fields, "run": job.name, "top1": res["final_eval_top1"], "eval_count": res["final_eval"]["count"],
            "steps": res["num_steps"], "wall_s": round(res["wall_s"], 2),
            "trainable_params": res["trainable_params"], "activation_cache": res["activation_cache"]["used"]}


def _store(workdir: str, run_dir: str, name: str) -> str:
    """The run's weights as a store (what ``load_pretrained`` reads), written once."""
    path = os.path.join(workdir, STORES, name)
    if not os.path.isdir(path):
        restore.export(run_dir, path)
    return path


def yosinski(config_file: str, workdir: str, *, seeds: Sequence[int] = (0,), overrides: dict | None = None,
             progress: bool | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """baseA, baseB and BnB / BnB+ / AnB / AnB+ at every n, per seed; returns (and writes) the study."""
    t0, workdir = time.time(), os.path.abspath(workdir)
    base = load_config(f"{config_file}:base", overrides)
    transfer = load_config(f"{config_file}:transfer", overrides)
    a, b = class_split(int(base.study.split_seed))
    names = lambda cs: "".join(glyphs.CHARACTERS[c] for c in cs)  # noqa: E731
    log(f"halves of the 62 glyph classes (split seed {base.study.split_seed}): A = {names(a)}, B = {names(b)}")
    rows = []
    for seed in seeds:
        stores = {}
        for half, classes in (("A", a), ("B", b)):
            job = Job(f"base{half}_seed{seed}", {"seed": int(seed), "data.classes": classes},
                      {"treatment": f"base{half}", "n": None, "seed": int(seed), "evaluated_on": half})
            d = os.path.join(workdir, RUNS, job.name)
            rows.append(_train(base, d, job, log, progress))
            stores[half] = _store(workdir, d, job.name)
        for n in base.study.copied_stages:
            for treatment in TREATMENTS:
                job = Job(f"{treatment}_n{n}_seed{seed}",
                          {"seed": int(seed), "data.classes": b, "weights": stores[treatment[0]],
                           "freeze.reinit_from": str(n), "freeze.frozen_depth": 0 if treatment.endswith("+") else n,
                           "activation_cache": not treatment.endswith("+")},
                          {"treatment": treatment, "n": int(n), "seed": int(seed), "evaluated_on": "B"})
                rows.append(_train(transfer, os.path.join(workdir, RUNS, job.name), job, log, progress))
    summary = {"study": "yosinski", "split_seed": int(base.study.split_seed), "classes_A": list(a),
               "classes_B": list(b), "characters_A": names(a), "characters_B": names(b), "seeds": list(seeds),
               "image_size": int(base.data.image_size), "arch": base.model.arch, "runs": rows,
               "table": _yosinski_table(rows), "wall_s": round(time.time() - t0, 1)}
    _write(summary, workdir, plot_yosinski)
    return summary


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "seeds": len(values)}


def _yosinski_table(rows: Sequence[dict]) -> dict[str, Any]:
    """Mean and spread over seeds: baseB, and each treatment at each n."""
    out: dict[str, Any] = {"baseB": _stats([r["top1"] for r in rows if r["treatment"] == "baseB"]),
                           "baseA": _stats([r["top1"] for r in rows if r["treatment"] == "baseA"])}
    for t in TREATMENTS:
        ns = sorted({r["n"] for r in rows if r["treatment"] == t})
        out[t] = {str(n): _stats([r["top1"] for r in rows if r["treatment"] == t and r["n"] == n]) for n in ns}
    return out


SURGICAL_VARIANTS = ("stem", "layer1", "layer2", "layer3", "layer4", "head", "all", "lp_ft")


def surgical(config_file: str, workdir: str, *, seeds: Sequence[int] = (0,), overrides: dict | None = None,
             progress: bool | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The source network, then per shift and seed one run per single trainable stage, all, and LP-FT."""
    t0, workdir = time.time(), os.path.abspath(workdir)
    pre_config = load_config(f"{config_file}:pretrain", overrides)
    target = load_config(f"{config_file}:surgical", overrides)
    lp_ft = {"freeze.lp_ft_steps": int(target.num_steps) // 2,
             "freeze.schedule_learning_rates": tuple(target.study.lp_ft_learning_rates)}
    every = {**{s: {"freeze.trainable_stages": (s,), "activation_cache": s != "stem"} for s in SURGICAL_VARIANTS[:6]},
             "all": {"freeze.frozen_depth": 0}, "lp_ft": lp_ft}
    unknown = [v for v in target.study.variants if v not in every]
    if unknown:   # before pretraining: a typo costs nothing
        raise ValueError(f"study.variants: unknown {unknown[0]!r}; choose among {', '.join(SURGICAL_VARIANTS)}")
    freezing = {v: every[v] for v in target.study.variants}
    job = Job("pretrain", {}, {"treatment": "source", "seed": int(pre_config.seed), "shift": ""})
    d = os.path.join(workdir, RUNS, job.name)
    source = _train(pre_config, d, job, log, progress)
    store = _store(workdir, d, "source")
    rows = []
    for shift in target.study.shifts:
        for seed in seeds:
            for variant, extra in freezing.items():
                job = Job(f"{shift}_{variant}_seed{seed}",
                          {"seed": int(seed), "weights": store, "data.shift": shift, **extra},
                          {"treatment": variant, "shift": shift, "seed": int(seed)})
                rows.append(_train(target, os.path.join(workdir, RUNS, job.name), job, log, progress))
    table = {shift: {v: _stats([r["top1"] for r in rows if r["shift"] == shift and r["treatment"] == v])
                     for v in freezing} for shift in target.study.shifts}
    summary = {"study": "surgical", "seeds": list(seeds), "shifts": list(target.study.shifts),
               "source_top1": source["top1"], "labels_per_class": int(target.data.labels_per_class),
               "runs": [source, *rows], "table": table, "wall_s": round(time.time() - t0, 1)}
    _write(summary, workdir, plot_surgical)
    return summary


def _write(summary: dict[str, Any], workdir: str, plot: Callable[[dict, str], None]) -> None:
    """study.csv, study.png, then study.json (written last)."""
    fields = ("treatment", "n", "shift", "seed", "top1", "eval_count", "steps", "wall_s", "trainable_params",
              "activation_cache", "run")
    with open(os.path.join(workdir, "study.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(summary["runs"])
    plot(summary, os.path.join(workdir, "study.png"))
    write_json(os.path.join(workdir, "study.json"), summary)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_yosinski(summary: dict[str, Any], path: str) -> None:
    """Shaped like the paper's Figure 2: top-1 on B against n, each treatment with its spread, baseB a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    table = summary["table"]
    base = table["baseB"]
    ax.axhline(100 * base["mean"], color="k", linestyle="--", linewidth=1, label="baseB")
    ax.axhspan(100 * base["min"], 100 * base["max"], color="k", alpha=0.08)
    styles = {"BnB": ("o", "white", "C0"), "BnB+": ("o", "C0", "C0"), "AnB": ("D", "white", "C3"),
              "AnB+": ("D", "C3", "C3")}
    for i, t in enumerate(TREATMENTS):
        ns = sorted(int(n) for n in table[t])
        st = [table[t][str(n)] for n in ns]
        x = [n + (i - 1.5) * 0.07 for n in ns]
        marker, face, edge = styles[t]
        ax.errorbar(x, [100 * s["mean"] for s in st],
                    yerr=[[100 * max(0.0, s["mean"] - s["min"]) for s in st],      # max: the mean of
                          [100 * max(0.0, s["max"] - s["mean"]) for s in st]],   # equal values may round off
                    fmt=marker + "-", mfc=face, mec=edge, color=edge, capsize=2, markersize=6, label=t,
                    linewidth=0.8)
    ax.set_xticks(range(1, 6), ["1\nstem", "2\n+layer1", "3\n+layer2", "4\n+layer3", "5\n+layer4"])
    ax.set_xlabel("n: stages copied from baseA / baseB")
    ax.set_ylabel("top-1 on B's held-out glyphs (%)")
    ax.set_title(f"Yosinski et al. 2014 on glyph halves (ResNet-18, {summary['image_size']} px, "
                 f"{len(summary['seeds'])} seed(s), bars: min-max)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_surgical(summary: dict[str, Any], path: str) -> None:
    """Top-1 per trained stage, one panel per shift (LP-FT and full fine-tuning beside)."""
    plt = _pyplot()
    shifts = summary["shifts"]
    fig, axes = plt.subplots(1, len(shifts), figsize=(5 * len(shifts), 3.8), squeeze=False)
    for ax, shift in zip(axes[0], shifts):
        st = summary["table"][shift]
        names = list(st)
        means = [100 * st[v]["mean"] for v in names]
        ax.bar(range(len(names)), means, yerr=[100 * st[v]["std"] for v in names], capsize=3,
               color=[{"all": "C7", "lp_ft": "C2"}.get(v, "C0") for v in names])
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_ylabel("top-1 on held-out shifted glyphs (%)")
        ax.set_title(f"shift: {shift}", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"surgical fine-tuning: the one stage that trains ({summary['labels_per_class']} labels/class, "
                 f"{len(summary['seeds'])} seed(s))", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(summary: dict[str, Any]) -> str:
    """The study's table in Markdown (mean ± spread over seeds, top-1 %)."""
    def cell(s):
        return f"{100 * s['mean']:.1f}" + (f" ± {100 * s['std']:.1f}" if s["seeds"] > 1 else "")
    table = summary["table"]
    if summary["study"] == "yosinski":
        ns = sorted({int(n) for t in TREATMENTS for n in table[t]})
        lines = ["| treatment | " + " | ".join(f"n={n}" for n in ns) + " |", "|---|" + "---:|" * len(ns),
                 "| baseB (n=0) | " + " | ".join([cell(table["baseB"])] * len(ns)) + " |"]
        lines += [f"| {t} | " + " | ".join(cell(table[t][str(n)]) for n in ns) + " |" for t in TREATMENTS]
        return "\n".join(lines)
    shifts = summary["shifts"]
    variants = list(table[shifts[0]])
    lines = ["| trained | " + " | ".join(shifts) + " |", "|---|" + "---:|" * len(shifts)]
    lines += [f"| {v} | " + " | ".join(cell(table[s][v]) for s in shifts) + " |" for v in variants]
    return "\n".join(lines)


__all__ = ["STUDIES", "TREATMENTS", "class_split", "format_table", "plot_surgical", "plot_yosinski", "surgical",
           "yosinski"]
