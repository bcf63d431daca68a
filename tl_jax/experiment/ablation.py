"""Frozen-depth ablations: one recipe at several frozen depths (and seeds), summarised and plotted.

Every (variant, seed) is an ordinary training run in its own workdir
``WORKDIR/runs/<variant>_seed<seed>``, trained in this process with ``run.train``: a finished
run is reported, not retrained, and an interrupted one resumes from its checkpoints, so
re-running the same command after a crash (or with more seeds or depths) only does what is
missing. Like ``train``, it refuses a run directory that holds another config: changing the
recipe needs a new WORKDIR.

Variants: ``depth<k>`` for each frozen depth, ``only_<stage>`` for each single trainable stage
(surgical fine-tuning: that stage trains, every other one is frozen), and ``scratch`` (same
architecture, random initialisation, everything trains). With ``activation_cache`` every variant
trains from its frozen prefix's cached activations where that is exact
(``tl_jax.experiment.activations``). Outputs: ``ablation.csv`` and ``ablation.json`` (one row per
variant: mean and spread over seeds of the best eval top-1, trainable parameters, steady-state
throughput, wall time) and ``ablation.png``.

With ``sweep`` (fields and values, ``tl_jax.experiment.sweep``) each variant is one sweep in
``WORKDIR/runs/<variant>_sweep`` instead of one run per seed: its row is its best member (by best
eval top-1, named in the note), and ``ablation.json`` holds every member under ``"sweeps"``.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import statistics
from typing import Any, Callable, Sequence

from tl_jax.experiment import run, sweep
from tl_jax.experiment.config import ConfigError, override
from tl_jax.experiment.rundir import RunDir, write_json
from tl_jax.experiment.setup import weights_metadata

RUNS = "runs"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str                     # run-directory prefix and table label
    depth: int                    # where it sits on the plot: the frozen depth, or the trained stage's index
    overrides: tuple = ()         # (dotted field, value) pairs applied to the base config
    note: str = ""
    kind: str = "depth"           # depth | surgical | scratch


def parse_list(text: str | Sequence[int] | None, everything: Sequence[int]) -> list[int]:
    """``"all"``/None -> everything; ``"none"`` -> nothing; ``"0,2,4"`` -> [0, 2, 4]; ``-1`` means the last."""
    if text is None or text == "all" or text == "":
        return list(everything)
    if text == "none":
        return []
    try:
        items = [int(x) for x in text.split(",")] if isinstance(text, str) else [int(x) for x in text]
    except ValueError:
        raise ConfigError(f"depths {text!r}: use all, or integers such as 0,2,4") from None
    last = everything[-1]
    out = [last if x == -1 else x for x in items]
    bad = [x for x in out if x not in everything]
    if bad:
        raise ConfigError(f"frozen depths {bad} out of range; this model has depths {everything[0]}..{last}")
    return out


def variants(config: Any, depths: str | Sequence[int] | None = "all", *, surgical: bool = False,
             scratch: bool = False, activation_cache: bool = False) -> list[Variant]:
    """The runs of an ablation of ``config``: each frozen depth, optionally each single trainable stage
    (surgical) and training from scratch; ``activation_cache`` for every one of them."""
    meta = weights_metadata(config)
    stages = meta["stage_names"]
    full = len(stages) - 1
    def plain(cached: bool) -> tuple:      # the base config's other freezing undone; the cache where it can apply
        return (("freeze.frozen_depth", 0), ("freeze.trainable_stages", ()), ("freeze.schedule", ()),
                ("freeze.lp_ft_steps", 0), ("freeze.unfreeze_every_steps", 0),
                ("activation_cache", activation_cache and cached))
    out = [Variant(f"depth{d}", d, (*plain(d > 0), ("freeze.frozen_depth", d)),
                   "+".join(stages[:d]) if d else "full fine-tune") for d in parse_list(depths, range(full + 1))]
    if surgical:
        out += [Variant(f"only_{s}", i, (*plain(i > 0), ("freeze.trainable_stages", (s,))), f"only {s} trains",
                        "surgical") for i, s in enumerate(stages)]
    if scratch:
        out.append(Variant("scratch", 0, (*plain(False), ("weights", ""), ("model.arch", meta["arch"]),
                                          ("model.source", meta["source"])), "random init, all trainable", "scratch"))
    return out


def run_dir(workdir: str, variant: Variant, seed: int) -> str:
    return os.path.join(workdir, RUNS, f"{variant.name}_seed{seed}")


def run_all(config: Any, workdir: str, runs: Sequence[Variant], seeds: Sequence[int] = (0,), *,
            train_fn: Callable[..., dict] | None = None, progress: bool | None = None, echo: bool = False,
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train every (variant, seed) that has no result yet; return all results (with ``variant``, ``seed``).

    ``run.train`` checks each run directory's config first: a finished run trained with another
    config is refused, never silently reused."""
    train_fn = train_fn or run.train
    results = []
    for v in runs:
        for seed in seeds:
            d = run_dir(workdir, v, seed)
            finished = RunDir(d, {}).result() is not None
            log(f"[ablation] {v.name} seed {seed}: " + ("finished earlier" if finished else f"training in {d}"))
            cfg = override(config, {**dict(v.overrides), "seed": int(seed)})
            res = train_fn(cfg, d, progress=progress, echo=echo)
            if not res.get("finished"):
                raise RuntimeError(f"run {d} did not finish: {res}")
            results.append({**res, "variant": v.name, "seed": int(seed), "depth": v.depth, "note": v.note,
                            "kind": v.kind, "workdir": d})
    return results


def _spread(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant (in first-seen order): statistics over seeds."""
    order, groups = [], {}
    for r in results:
        if r["variant"] not in groups:
            order.append(r["variant"])
            groups[r["variant"]] = []
        groups[r["variant"]].append(r)
    rows = []
    for name in order:
        g = groups[name]
        best = [r["best_eval_top1"] for r in g if r.get("best_eval_top1") is not None]
        final = [r["final_eval_top1"] for r in g if r.get("final_eval_top1") is not None]
        rows.append({
            "variant": name, "kind": g[0].get("kind", "depth"), "depth": g[0]["depth"], "note": g[0]["note"],
            "seeds": [r["seed"] for r in g],
            "best_top1_mean": _mean(best), "best_top1_std": _spread(best) if best else None,
            "best_top1_min": min(best) if best else None, "best_top1_max": max(best) if best else None,
            "final_top1_mean": _mean(final), "final_top1_std": _spread(final) if final else None,
            "trainable_params": g[0]["trainable_params"], "frozen_params": g[0]["frozen_params"],
            "steps_per_s": _mean([r.get("steps_per_s") for r in g]),
            "images_per_s": _mean([r.get("images_per_s") for r in g]),
            "wall_s": _mean([r.get("wall_s") for r in g]),
        })
    return rows


CSV_FIELDS = ("variant", "kind", "depth", "note", "seeds", "best_top1_mean", "best_top1_std", "best_top1_min",
              "best_top1_max", "final_top1_mean", "final_top1_std", "trainable_params", "frozen_params",
              "steps_per_s", "images_per_s", "wall_s")


def run_sweeps(config: Any, workdir: str, runs: Sequence[Variant], fields: dict[str, list], *,
               log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One sweep per variant (finished ones reported, interrupted ones resumed): (a result per variant,
    its best member, as ``run_all`` gives; every sweep's summary)."""
    results, sweeps = [], []
    for v in runs:
        d = os.path.join(workdir, RUNS, f"{v.name}_sweep")
        log(f"[ablation] {v.name}: sweep of {len(sweep.member_values(fields))} members in {d}")
        summary = sweep.run(override(config, dict(v.overrides)), d, fields, echo=False)
        if not summary.get("finished"):
            raise RuntimeError(f"sweep {d} did not finish: {summary}")
        best = max(summary["members"], key=lambda m: -1.0 if m["best_eval_top1"] is None else m["best_eval_top1"])
        chosen = ", ".join(f"{f}={best[f]}" for f in summary["swept"])
        results.append({"variant": v.name, "kind": v.kind, "seed": int(best.get("seed", config.seed)), "depth": v.depth,
                        "note": f"{v.note}; best of {summary['num_members']}: {chosen}",
                        "best_eval_top1": best["best_eval_top1"], "final_eval_top1": best["final_eval_top1"],
                        "trainable_params": summary["trainable_params_per_member"],
                        "frozen_params": summary["frozen_params"], "steps_per_s": summary["steps_per_s"],
                        "images_per_s": summary["member_images_per_s"], "wall_s": summary["wall_s"], "workdir": d})
        sweeps.append({"variant": v.name, "depth": v.depth, "workdir": d, **summary})
    return results, sweeps


def write_outputs(rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], workdir: str,
                  title: str = "frozen-depth ablation", extra: dict[str, Any] | None = None) -> dict[str, str]:
    """ablation.csv, ablation.json (rows and every run's result) and ablation.png in ``workdir``."""
    os.makedirs(workdir, exist_ok=True)
    paths = {k: os.path.join(workdir, f"ablation.{k}") for k in ("csv", "json", "png")}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: " ".join(map(str, r[k])) if k == "seeds" else r[k] for k in CSV_FIELDS})
    plot(rows, paths["png"], title)
    write_json(paths["json"], {"title": title, "rows": list(rows), "runs": list(results), **(extra or {})})
    return paths


def plot(rows: Sequence[dict[str, Any]], path: str, title: str) -> None:
    """Best eval top-1 (mean, min-max over seeds), trainable parameters, throughput and wall time vs depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth_rows = [r for r in rows if r.get("kind", "depth") == "depth"]
    surgical = [r for r in rows if r.get("kind") == "surgical"]
    extra = [r for r in rows if r.get("kind") == "scratch"]
    x = sorted({r["depth"] for r in rows})
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [("best_top1_mean", "best eval top-1", False), ("trainable_params", "trainable parameters", True),
              ("images_per_s", "train images/s (steady state)", True), ("wall_s", "wall time per run (s)", False)]
    for ax, (key, label, log) in zip(axes.flat, panels):
        dx = [r["depth"] for r in depth_rows]
        y = [r[key] if r[key] is not None else float("nan") for r in depth_rows]
        if key == "best_top1_mean":
            lo = [r[key] - r["best_top1_min"] if r[key] is not None else 0 for r in depth_rows]
            hi = [r["best_top1_max"] - r[key] if r[key] is not None else 0 for r in depth_rows]
            ax.errorbar(dx, y, yerr=[lo, hi], marker="o", capsize=3, label="pretrained, frozen prefix")
        else:
            ax.plot(dx, y, marker="o", label="pretrained, frozen prefix")
        if surgical:   # x: the index of the one stage that trains
            ax.plot([r["depth"] for r in surgical], [r[key] if r[key] is not None else float("nan") for r in surgical],
                    marker="s", linestyle=":", color="C1", label="only stage x trains (surgical)")
        for r in extra:   # no frozen depth: a reference level
            if r[key] is not None:
                ax.axhline(r[key], color="C2", linestyle="--", label=r["variant"])
        ax.set_xlabel("frozen depth (stages frozen); surgical: index of the trained stage")
        ax.set_ylabel(label)
        ax.set_xticks(x)
        if log and any(v > 0 for v in y if v == v):   # a log axis needs a positive value (NaN != NaN)
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table (also valid Markdown)."""
    def pct(m, s):
        return "n/a" if m is None else f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s else "")

    def num(x, fmt):
        return "n/a" if x is None else format(x, fmt)
    lines = ["| variant | frozen | trainable params | best eval top-1 % | final eval top-1 % | train img/s | wall s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['note']} | {r['trainable_params']:,} | "
                     f"{pct(r['best_top1_mean'], r['best_top1_std'])} | "
                     f"{pct(r['final_top1_mean'], r['final_top1_std'])} | "
                     f"{num(r['images_per_s'], '.0f')} | {num(r['wall_s'], '.1f')} |")
    return "\n".join(lines)


def ablate(config: Any, workdir: str, *, depths: str | Sequence[int] | None = "all", seeds: Sequence[int] = (0,),
           surgical: bool = False, scratch: bool = False, activation_cache: bool = False, title: str | None = None,
           progress: bool | None = None, log: Callable[[str], None] = print,
           sweep_fields: dict[str, list] | None = None) -> tuple[list[dict], dict[str, str]]:
    """Run (or finish) the ablation and write its outputs; returns (rows, output paths). With ``sweep_fields``
    every variant is a sweep of those fields (``seeds`` unused: sweep ``seed`` instead)."""
    runs = variants(config, depths, surgical=surgical, scratch=scratch, activation_cache=activation_cache)
    extra = None
    if sweep_fields:
        results, sweeps = run_sweeps(config, workdir, runs, sweep_fields, log=log)
        extra = {"sweeps": sweeps}
    else:
        results = run_all(config, workdir, runs, seeds, progress=progress, log=log)
    rows = summarize(results)
    paths = write_outputs(rows, results, workdir, title or f"frozen-depth ablation: {config.data.source}", extra)
    return rows, paths


__all__ = ["Variant", "ablate", "format_table", "parse_list", "plot", "run_all", "run_dir", "run_sweeps",
           "summarize", "variants", "write_outputs"]
