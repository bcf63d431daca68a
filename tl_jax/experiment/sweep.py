"""``sweep``: one config, the Cartesian product of ``--sweep field=v1,v2,...`` values, trained in one program.

Only fields that keep the computation's shape can share a program (:data:`SWEEPABLE`); the members
run through ``tl_jax.sweep``: the frozen prefix once per batch, the trainable suffixes side by side.
Fields that change the graph (:data:`GRAPH_FIELDS`) are refused in one line; every other field
too, since it is either not a training number or one the step does not take per member.

``seed`` in a sweep is the model's seed: the new head's initialisation and the dropout rng. The data
(order, augmentation, label subset) keep the base config's seed (``data.seed`` is set to it), so
every member sees the same batches, and member ``i`` equals ``train.py`` with the config overrides
listed for it in ``sweep.json``. From a random initialisation (``weights=''``) the seed draws the
frozen stages too, so there a seed sweep needs frozen depth 0.

A sweep directory holds ``config.json`` (the base config), ``sweep_plan.json`` (the swept values; a
restart with others is refused), ``metrics.jsonl`` (per-member lists), ``checkpoints/`` (the whole
stack; the same command resumes from the latest, after a crash or SIGKILL) and, when done,
``sweep.json``, ``sweep.csv`` and ``sweep.png`` (eval top-1 against each swept field).
"""
from __future__ import annotations

import csv
import itertools
import math
import os
import time
from typing import Any, Mapping, Sequence

from tl_jax import loop, members
from tl_jax.experiment.config import ConfigError, field_hint, has_field, override, to_dict
from tl_jax.experiment.logs import read_metrics, total_wall_time
from tl_jax.experiment.rundir import METRICS, RunDir, write_json
from tl_jax.experiment.setup import build_model, data_seed, optim_config, prepare, validate

# field -> type of its values
SWEEPABLE = {"optim.learning_rate": float, "optim.head_only_learning_rate": float, "optim.weight_decay": float,
             "optim.momentum": float, "label_smoothing": float, "seed": int}
GRAPH_FIELDS = ("weights", "model.arch", "model.source", "model.dtype", "model.fold_frozen_bn", "freeze.frozen_depth",
                "freeze.trainable_stages", "freeze.schedule", "freeze.lp_ft_steps", "freeze.reinit_from",
                "freeze.patterns", "freeze.unfreeze_every_steps", "freeze.unfreeze_until", "batch_size", "eval_batch_size",
                "data.image_size", "data.resize_size", "data.source", "data.classes", "data.num_classes",
                "optim.name", "optim.schedule", "num_steps", "num_epochs", "parallel")
PLAN, SUMMARY = "sweep_plan.json", "sweep.json"
Fields = dict[str, list]


def parse(specs: Sequence[str], config: Any) -> Fields:
    """``["optim.learning_rate=0.1,0.03", "seed=0,1"]`` -> ``{"optim.learning_rate": [0.1, 0.03], "seed": [0, 1]}``."""
    fields: Fields = {}
    for spec in specs:
        field, sep, text = spec.partition("=")
        field = field.strip()
        if not sep or not text.strip():
            raise ConfigError(f"--sweep {spec!r}: use FIELD=V1,V2,... (e.g. optim.learning_rate=0.1,0.01)")
        if not has_field(config, field):
            raise ConfigError(f"--sweep {field}: the config has no field {field!r}{field_hint(config, field)}")
        if field in GRAPH_FIELDS:
            raise ConfigError(f"--sweep {field}: it changes the computation's shape, so its values cannot share one "
                              f"program; run them separately (frozen depths: ablate_frozen_depth.py --sweep)")
        if field not in SWEEPABLE:
            raise ConfigError(f"--sweep {field}: not sweepable in one program; sweepable: {', '.join(SWEEPABLE)}")
        if field in fields:
            raise ConfigError(f"--sweep {field} given twice; list all its values in one --sweep")
        try:
            values = [SWEEPABLE[field](v.strip()) for v in text.split(",")]
        except ValueError:
            raise ConfigError(f"--sweep {spec!r}: values must be {SWEEPABLE[field].__name__}s") from None
        if len(set(values)) != len(values):
            raise ConfigError(f"--sweep {spec!r}: a value is repeated")
        fields[field] = values
    if not fields:
        raise ConfigError("nothing to sweep: pass --sweep FIELD=V1,V2,...")
    return fields


def member_values(fields: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """The Cartesian product, the first field varying slowest."""
    names = list(fields)
    return [dict(zip(names, combo)) for combo in itertools.product(*(fields[n] for n in names))]


def member_config(config: Any, values: Mapping[str, Any]) -> Any:
    """The config a single ``train.py`` run of this member would take (``member_overrides``)."""
    return override(config, member_overrides(config, values))


def member_overrides(config: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    extra = {"data.seed": data_seed(config)} if "seed" in values else {}
    return {**values, **extra, "activation_cache": False}


def build(config: Any, fields: Mapping[str, Sequence], *, batching: str = "vmap",
          shard_members: bool = False) -> tuple[Any, members.Sweep, list[dict[str, Any]]]:
    """(the first member's ``Experiment``, the ``tl_jax.members.Sweep``, each member's values)."""
    values = member_values(fields)
    configs = [member_config(config, v) for v in values]
    for c in configs:
        validate(c)
    exp = prepare(configs[0])
    spec = exp.setup.freeze
    if "seed" in fields and not config.weights and spec.prefix_depth > 0:
        raise ConfigError("--sweep seed from a random initialisation (weights='') changes the frozen stages too: "
                          "sweep seeds at frozen depth 0, or from pretrained weights")
    by_seed = {int(configs[0].seed): exp.setup.variables}
    out = []
    for c in configs:
        if int(c.seed) not in by_seed:
            by_seed[int(c.seed)] = build_model(c, exp.metadata, exp.info["num_classes"])[1]
        out.append(members.Member(optim_config(c, spec, exp.train_data.steps_per_epoch), float(c.label_smoothing),
                                  int(c.seed), by_seed[int(c.seed)]))
    return exp, members.Sweep(exp.setup, tuple(out), batching=batching, shard_members=shard_members), values


def run(config: Any, workdir: str, fields: Mapping[str, Sequence], *, batching: str = "vmap",
        shard_members: bool = False, stop_at_step: int | None = None, echo: bool = True) -> dict[str, Any]:
    """Train (or resume, or report) the sweep in ``workdir``; returns ``sweep.json``'s content
    (``{"finished": False, "step": ...}`` after ``stop_at_step``)."""
    plan = {"fields": [[k, list(v)] for k, v in fields.items()]}   # a list: the order fixes the members' order
    rd = RunDir(workdir, to_dict(config), result_file=SUMMARY, plan=plan, plan_file=PLAN)
    done = rd.begin((lambda d: "\n" + format_table(d)) if echo else None)
    if done is not None:
        return done
    session = time.time()
    exp, sw, values = build(config, fields, batching=batching, shard_members=shard_members)
    with rd.writing():
        jsonl = loop.JsonlLogger(rd.file(METRICS))

        def log(record: dict[str, Any]) -> None:
            jsonl({**record, "time": round(time.time(), 3)})
            if echo and record.get("split") == "eval":
                print(f"[sweep] step {record['step']}: eval top-1 " +
                      " ".join("dropped" if t is None else f"{100 * t:.1f}" for t in record["top1"]), flush=True)
        res = members.fit(sw, rd.path, log=log, stop_at_step=stop_at_step)
        if res.step < sw.setup.num_steps:
            return {"finished": False, "step": res.step, "num_steps": sw.setup.num_steps}
        summary = summarize(config, exp, sw, values, fields, res, read_metrics(rd.path), session)
        write_outputs(summary, rd.path)
    if echo:
        print(format_table(summary), flush=True)
    return summary


def summarize(config: Any, exp: Any, sw: members.Sweep, values: Sequence[Mapping[str, Any]],
              fields: Mapping[str, Sequence], res: members.SweepResult, records: Sequence[Mapping[str, Any]],
              session_start: float) -> dict[str, Any]:
    """sweep.json: one row per member (values, final and best eval top-1, final train loss)."""
    evals = {r["step"]: r for r in records if r.get("split") == "eval" and r["step"] <= res.step}  # last wins
    train = [r for r in records if r.get("split") == "train" and r["step"] <= res.step]
    rows = []
    for i, v in enumerate(values):
        history = {s: r["top1"][i] for s, r in evals.items() if r["top1"][i] is not None}
        best_step = max(history, key=lambda s: (history[s], -s)) if history else None
        final = res.final_evals[i] if res.final_evals else None
        loss = train[-1]["loss"][i] if train else None
        dropped = i in res.dropped
        rows.append({"member": i, **{f: v[f] for f in fields},
                     "final_eval_top1": final["top1"] if final else None,
                     "final_eval_loss": final["loss"] if final else None,
                     "eval_count": final["count"] if final else None,
                     "best_eval_top1": history[best_step] if history else None, "best_eval_step": best_step,
                     "final_train_loss": loss, "diverged": dropped or (loss is not None and not math.isfinite(loss)),
                     "learning_rate": sw.members[i].optim.learning_rate,
                     "overrides": member_overrides(config, v)})
    sps = res.steps_per_s
    batch = int(config.batch_size)
    return {"finished": True, "swept": list(fields), "fields": {k: list(v) for k, v in fields.items()}, "members": rows,
            "num_members": len(rows), "frozen_depth": sw.depth, "frozen_stages": exp.info["frozen_stages"],
            "arch": exp.info["arch"], "num_steps": sw.setup.num_steps, "batch_size": batch,
            "trainable_params_per_member": exp.info["trainable_params"], "frozen_params": exp.info["frozen_params"],
            "steps_per_s": sps, "member_images_per_s": sps * batch * len(rows) if sps else None,
            "wall_s": total_wall_time(records), "session_wall_s": time.time() - session_start,
            "resumed_from": res.start_step, "data_order": "every member: the same batches, in the same order"}


CSV_FIELDS = ("member", "final_eval_top1", "best_eval_top1", "best_eval_step", "final_train_loss", "eval_count",
              "diverged")


def write_outputs(summary: Mapping[str, Any], workdir: str) -> dict[str, str]:
    """sweep.json, sweep.csv and sweep.png (written last: sweep.json means finished)."""
    paths = {k: os.path.join(workdir, f"sweep.{k}") for k in ("csv", "png", "json")}
    fields = summary["swept"]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*fields, *CSV_FIELDS], extrasaction="ignore")
        w.writeheader()
        w.writerows(summary["members"])
    plot(summary, paths["png"])
    write_json(paths["json"], summary)
    return paths


def plot(summary: Mapping[str, Any], path: str) -> None:
    """Eval top-1 (best and final) of every member against each swept field."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields, rows = summary["swept"], summary["members"]
    fig, axes = plt.subplots(1, len(fields), figsize=(4.5 * len(fields), 3.6), squeeze=False)
    for ax, field in zip(axes[0], fields):
        xs = [r[field] for r in rows]
        for key, marker in (("best_eval_top1", "o"), ("final_eval_top1", "x")):
            ys = [r[key] if r[key] is not None else float("nan") for r in rows]
            ax.plot(xs, ys, marker, label=key.replace("_", " "), alpha=0.8)
        if len(set(xs)) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(field)
        ax.set_ylabel("eval top-1")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"sweep: {summary['arch']}, frozen depth {summary['frozen_depth']}, {len(rows)} members")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(summary: Mapping[str, Any]) -> str:
    """A Markdown table, one row per member."""
    fields = summary["swept"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.2f}"
    lines = ["| " + " | ".join([*fields, "best eval top-1 %", "final eval top-1 %", "train loss"]) + " |",
             "|" + "---|" * (len(fields) + 3)]
    for r in summary["members"]:
        loss = "n/a" if r["final_train_loss"] is None else f"{r['final_train_loss']:.4f}"
        lines.append("| " + " | ".join([*(str(r[f]) for f in fields), pct(r["best_eval_top1"]),
                                        pct(r["final_eval_top1"]), loss]) + " |")
    return "\n".join(lines)


__all__ = ["GRAPH_FIELDS", "SWEEPABLE", "build", "format_table", "member_config", "member_overrides", "member_values",
           "parse", "plot", "run", "summarize", "write_outputs"]
