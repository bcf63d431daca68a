"""The offline quickstart: does a broad pretrained backbone make a few labels enough? Measured, end to end.

1. Pretrain ResNet-18 from scratch on printed glyphs (``configs/quickstart.py:pretrain``), once:
   the run directory caches it, a re-run skips it.
2. Save it with ``save_pretrained``, the format ``scripts/convert_weights.py`` writes for ImageNet
   weights, so the transfer half loads it exactly as it would load published weights.
3. For each labels-per-class setting, train on the handwritten digits at every frozen depth (the
   frozen prefix computed once, from cached activations) and from scratch with the same budget (the
   ablation machinery, ``tl_jax.experiment.ablation``), each evaluated on the same held-out 80% of
   the digits.
4. Probe every stage of the pretrained backbone with a closed-form ridge classifier
   (``tl_jax.experiment.stage_probe``) and compare its ranking of the stages with the ablation's.
5. Write ``summary.json`` (one record per setting and variant), ``transfer_curve.png`` (top-1 against
   labels per class) and ``frozen_depth.png`` (top-1 against frozen depth), and return the table.

Every run uses the hyperparameters fixed in ``configs/quickstart.py``; the frozen depth reported as
"fixed" is full fine-tuning, chosen before any result, and the best depth per setting is reported
too, marked as chosen on the evaluation images (an oracle, for reading the ablation only).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Sequence

import jax

from tl_jax.experiment import ablation, restore, run, stage_probe
from tl_jax.experiment.config import load_config, override
from tl_jax.experiment.rundir import write_json

PRETRAIN, STORE, PROBE = "pretrain", "pretrained_resnet18_glyphs", "stage_probe"
SHOTS = (1, 3, 10)


def run_quickstart(config_file: str, workdir: str, *, seeds: Sequence[int] = (0,), shots: Sequence[int] = SHOTS,
                   depths: str = "all", overrides: dict[str, Any] | None = None, progress: bool | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything above, from ``configs/quickstart.py`` (``config_file``) into ``workdir``; returns the summary.

    ``depths`` and ``overrides`` (applied to both of its configs) make smaller versions, e.g. in tests.
    """
    t0 = time.time()
    workdir = os.path.abspath(workdir)
    # The few-label runs share shapes and hyperparameters across settings: compile each program once
    # (in the workdir, unless a compilation cache is configured already, e.g. JAX_COMPILATION_CACHE_DIR).
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    pre_config = override(load_config(config_file + ":pretrain"), overrides or {})
    log("1/4 pretraining ResNet-18 on printed glyphs (62 classes, 8x8) ...")
    pre = run.train(pre_config, os.path.join(workdir, PRETRAIN), progress=progress, echo=False)
    log(f"    held-out glyph top-1 {100 * pre['final_eval_top1']:.1f}% after {pre['num_steps']} steps "
        f"({pre['wall_s']:.0f} s)")
    store = os.path.join(workdir, STORE)
    if not os.path.isdir(store):
        restore.export(os.path.join(workdir, PRETRAIN), store)
    log(f"2/4 saved as pretrained weights: {store}")

    log(f"3/4 transfer to handwritten digits with {', '.join(map(str, shots))} labels per class, every frozen "
        f"depth and from scratch, seeds {', '.join(map(str, seeds))} ...")
    records, by_shots = [], {}
    for k in shots:
        config = override(load_config(config_file), {**(overrides or {}), "weights": store,
                                                     "data.labels_per_class": int(k)})
        variants = ablation.variants(config, depths, scratch=True, activation_cache=bool(config.activation_cache))
        results = ablation.run_all(config, os.path.join(workdir, f"labels{k}"), variants, seeds, progress=progress,
                                   log=lambda m: log(f"    [{k} labels/class] " + m.removeprefix("[ablation] ")))
        by_shots[k] = results
        records += [_record(k, rows) for rows in _group(results)]

    log("4/4 ridge probe on every stage of the pretrained backbone ...")
    probe = stage_probe.probe_stages(store, "digits", train_split="all[:20%]", eval_split="all[20%:]",
                                     shots=list(shots), seeds=list(seeds), image_size=8,
                                     output=os.path.join(workdir, PROBE))
    summary = {"records": records, "probe": _probe_vs_ablation(probe, records, shots),
               "pretrain": {k: pre[k] for k in ("final_eval_top1", "num_steps", "wall_s", "images_per_s")},
               "seeds": list(seeds), "shots": list(shots), "wall_s": round(time.time() - t0, 1)}
    write_json(os.path.join(workdir, "summary.json"), summary)
    plot_curve(records, os.path.join(workdir, "transfer_curve.png"))
    plot_depths(records, os.path.join(workdir, "frozen_depth.png"))
    return summary


def _group(results: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[str, list] = {}
    for r in results:
        groups.setdefault(r["variant"], []).append(r)
    return list(groups.values())


def _record(shots: int, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One summary record: a variant at a setting, over seeds (the top-1 of the one eval at the end)."""
    top1 = [r["final_eval_top1"] for r in rows]
    speeds = [r["images_per_s"] for r in rows if r.get("images_per_s")]
    return {"labels_per_class": shots, "variant": rows[0]["variant"], "frozen_depth": rows[0]["depth"],
            "top1_mean": statistics.fmean(top1), "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
            "seeds": [r["seed"] for r in rows], "trainable_params": rows[0]["trainable_params"],
            "train_images_per_s": statistics.fmean(speeds) if speeds else None,
            "wall_s": statistics.fmean(r["wall_s"] for r in rows)}


def _probe_vs_ablation(probe: dict[str, Any], records: Sequence[dict[str, Any]], shots: Sequence[int]) -> dict:
    """Per setting: the stage probe's top-1 after stage i against the ablation's top-1 at frozen depth i+1."""
    out = {"stages": probe["stages"], "extract_s": probe["extract_s"], "probe_s": probe["probe_s"], "settings": []}
    for k in shots:
        probe_top1 = [r["top1_mean"] for r in probe["rows"] if r["shots"] == k]
        depth = {r["frozen_depth"]: r["top1_mean"] for r in records
                 if r["labels_per_class"] == k and r["variant"].startswith("depth")}
        paired = sorted(d for d in depth if 1 <= d <= len(probe_top1))     # frozen depth d = features after stage d-1
        best_probe = max(range(len(probe_top1)), key=probe_top1.__getitem__) + 1
        out["settings"].append({
            "labels_per_class": k, "probe_top1": probe_top1, "ablation_top1": {d: depth[d] for d in sorted(depth)},
            "spearman": stage_probe.spearman([probe_top1[d - 1] for d in paired], [depth[d] for d in paired]),
            "probe_best_depth": best_probe, "ablation_best_depth": max(depth, key=depth.get)})
    return out


def format_table(summary: dict[str, Any]) -> str:
    """Markdown table: one row per variant, one column per labels-per-class setting."""
    shots = summary["shots"]
    recs = {(r["labels_per_class"], r["variant"]): r for r in summary["records"]}
    variants = list(dict.fromkeys(r["variant"] for r in summary["records"]))
    lines = ["| variant | trainable params | " + " | ".join(f"{k} label{'s' if k > 1 else ''}/class" for k in shots)
             + " | train img/s |", "|---|---:|" + "---:|" * len(shots) + "---:|"]
    for v in variants:
        cells = []
        for k in shots:
            r = recs[(k, v)]
            cells.append(f"{100 * r['top1_mean']:.1f}" + (f" ± {100 * r['top1_std']:.1f}" if r["top1_std"] else ""))
        speed = [recs[(k, v)]["train_images_per_s"] for k in shots if recs[(k, v)]["train_images_per_s"]]
        first = recs[(shots[0], v)]
        lines.append(f"| {v} | {first['trainable_params']:,} | " + " | ".join(cells) + " | "
                     + (f"{statistics.fmean(speed):.0f}" if speed else "n/a") + " |")
    return "\n".join(lines)


def plot_curve(records: Sequence[dict[str, Any]], path: str) -> None:
    """Top-1 against labels per class: full fine-tune (fixed), the best depth (oracle), the probe, scratch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({r["labels_per_class"] for r in records})

    def variant(name: str) -> Callable:
        return lambda rs: next((r for r in rs if r["variant"] == name), None)

    pick = {"full fine-tune (pretrained)": variant("depth0"),
            "best frozen depth (chosen on eval: oracle)": lambda rs: max(
                (r for r in rs if r["variant"].startswith("depth")), key=lambda r: r["top1_mean"], default=None),
            "linear probe (only the head trains)": variant("depth5"),
            "from scratch, same budget": variant("scratch")}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (label, choose), style in zip(pick.items(), ("o-", "^:", "s--", "x-")):
        chosen = [choose([r for r in records if r["labels_per_class"] == k]) for k in shots]
        if None in chosen:      # a smaller run without that variant
            continue
        ax.errorbar(shots, [100 * r["top1_mean"] for r in chosen], yerr=[100 * r["top1_std"] for r in chosen],
                    fmt=style, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(shots, [str(k) for k in shots])
    _save(fig, ax, path, "labelled digits per class", "top-1 on 1,438 held-out digits (%)",
          "ResNet-18 pretrained on printed glyphs -> handwritten digits")


def plot_depths(records: Sequence[dict[str, Any]], path: str) -> None:
    """Top-1 against frozen depth, one line per setting; scratch dashed, the cached-feature probe marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, k in enumerate(sorted({r["labels_per_class"] for r in records})):
        rs = [r for r in records if r["labels_per_class"] == k]
        depth = sorted((r for r in rs if r["variant"].startswith("depth")), key=lambda r: r["frozen_depth"])
        color = f"C{i}"
        ax.errorbar([r["frozen_depth"] for r in depth], [100 * r["top1_mean"] for r in depth],
                    yerr=[100 * r["top1_std"] for r in depth], fmt="o-", color=color, capsize=3,
                    label=f"{k} label{'s' if k != 1 else ''}/class")
        scratch = next(r for r in rs if r["variant"] == "scratch")
        ax.axhline(100 * scratch["top1_mean"], color=color, linestyle="--", linewidth=1)
    _save(fig, ax, path, "frozen depth (0: full fine-tune; 5: only the head trains)",
          "top-1 on held-out digits (%)", "frozen-depth ablation (dashed: from scratch)")


def _save(fig: Any, ax: Any, path: str, xlabel: str, ylabel: str, title: str) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
