"""From a config to a trained, evaluated model: the logic behind every script.

Data flows weights -> model -> freeze spec -> optimizer -> data -> ``tl_jax.loop.fit``;
the scripts (``scripts/train.py``, ``evaluate.py``, ``predict.py``, ``ablate_frozen_depth.py``,
``quickstart.py``) only parse flags and call :func:`train`, :func:`evaluate_run` or
:func:`predict`. A run directory ("workdir") holds::

    config.json     the config as given (a restart with another config is refused)
    run.json        what the run derived from it: model, stages, preprocessing, classes, steps
    metrics.jsonl   one JSON object per event (train logs, evals), appended across restarts
    tensorboard/    the same scalars as TensorBoard event files
    checkpoints/    orbax checkpoints, the latest N plus the best by eval top-1
    result.json     written last, so its presence means "finished": best and final eval,
                    trainable parameters, steady-state throughput, wall time
    feature_cache/  linear-probe features (``config.feature_cache``, see ``tl_jax.features``)

Restarting ``train`` on a workdir resumes from the latest checkpoint (``tl_jax.loop.fit``
restores the state and the data position); a finished run returns its ``result.json``.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import os
import socket
import sys
import time
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG, RUN, METRICS, RESULT = "config.json", "run.json", "metrics.jsonl", "result.json"
CHECKPOINTS, TENSORBOARD = "checkpoints", "tensorboard"
HEAD_INITS = ("lecun", "zeros")
# Fields that may change when a run is restarted: they do not change what is trained.
RESTART_MUTABLE = ("log_every_steps", "eval_every_epochs", "checkpoint_every_steps", "keep_checkpoints",
                   "data.data_dir", "data.skip_corrupt", "tensorboard")


class StopTraining(Exception):
    """Raised inside the data iterator to leave ``fit`` at a step boundary (``stop_at_step``)."""


# --------------------------------------------------------------------------- configs
def load_config(path: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """A locked ``ConfigDict`` from a config file (``path`` or ``path:arg`` for ``get_config(arg)``).

    ``overrides`` maps dotted field names to values (``{"freeze.frozen_depth": 3}``); like
    ``--config.x=y`` on the command line, a misspelt field fails with a "did you mean" hint.
    Config files import ``from configs import default``, so the repository root goes on sys.path.
    """
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    file, _, arg = path.partition(":")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config file {file!r}")
    spec = importlib.util.spec_from_file_location(f"_tl_jax_config_{abs(hash(file))}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return override(config, overrides or {})


def override(config: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of ``config`` with dotted fields replaced (the copy stays locked: typos fail)."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = getattr(node, p)
        if leaf not in node:
            getattr(node, leaf)  # raises AttributeError with ml_collections' "did you mean" hint
        setattr(node, leaf, value)
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a ConfigDict (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config)))


def config_from_dict(d: Mapping[str, Any]) -> Any:
    import ml_collections

    c = ml_collections.ConfigDict(dict(d))
    c.lock()
    return c


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_same_config(old: Mapping[str, Any], new: Mapping[str, Any], workdir: str) -> None:
    a, b = _flatten(old), _flatten(new)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESTART_MUTABLE)
    if diff:
        lines = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:8])
        raise ValueError(f"{workdir} holds a run with another config ({lines}); resuming it would mix two "
                         f"experiments. Use a new --workdir (or delete {os.path.join(workdir, CONFIG)} and "
                         f"{CHECKPOINTS}/ to start over).")


def validate(config: Any, stage_names: Sequence[str] | None = None) -> None:
    """Fail fast, before any data or weights are read, on values no run could use."""
    from tl_jax.data import SOURCES
    from tl_jax.optim import OptimConfig
    from tl_jax.parallel import KINDS

    OptimConfig.from_config(config.optim)  # unknown optimizer or schedule
    if config.model.head_init not in HEAD_INITS:
        raise ValueError(f"model.head_init {config.model.head_init!r} is not one of {HEAD_INITS}")
    compute_dtype(config)
    kind, _, arg = config.data.source.partition(":")
    if not ((kind in ("tfds", "folder") and arg) or config.data.source in ("synthetic", "digits")):
        raise ValueError(f"data.source {config.data.source!r} is not one of {', '.join(SOURCES)}")
    if config.parallel not in KINDS:
        raise ValueError(f"parallel {config.parallel!r} is not one of {KINDS}")
    checks = {"batch_size": config.batch_size >= 1, "feature_cache_views": config.feature_cache_views >= 1,
              "num_epochs or num_steps": config.num_epochs > 0 or config.num_steps > 0,
              "log_every_steps": config.log_every_steps >= 1,
              "checkpoint_every_steps": config.checkpoint_every_steps >= 0,
              "keep_checkpoints": config.keep_checkpoints >= 1,
              "data.min_crop_area": 0 < config.data.min_crop_area <= 1}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"config values out of range: {', '.join(bad)}")
    if not config.weights:
        from tl_jax.models import registry

        registry.info(config.model.arch, config.model.source)
    if stage_names is not None:
        freeze_spec(config, stage_names)


# --------------------------------------------------------------------------- data
def data_options(config: Any, role: str = "train") -> dict[str, Any]:
    """Source-specific options of ``make_dataset`` from ``config.data``, for the ``"train"`` or ``"eval"`` split.

    ``labels_per_class`` subsamples the training split only: evaluation uses every example.
    """
    d = config.data
    kind = d.source.partition(":")[0]
    if kind == "tfds":
        return {"data_dir": d.data_dir} if d.data_dir else {}
    if kind == "folder":
        return {"skip_corrupt": bool(d.skip_corrupt)}
    if d.source == "synthetic":
        opts = {"num_classes": int(d.num_classes or 10), "data_seed": 0}
        return {**opts, "num_examples": int(d.num_examples)} if d.num_examples else opts
    if d.source == "digits":
        opts: dict[str, Any] = {}
        if d.classes:
            opts["classes"] = tuple(int(c) for c in d.classes)
        if d.labels_per_class and role == "train":
            opts["labels_per_class"] = int(d.labels_per_class)
        return opts
    return {}


def image_size(config: Any, metadata: Mapping[str, Any]) -> int:
    return int(config.data.image_size or metadata["input_size"])


def make_data(config: Any, metadata: Mapping[str, Any], split: str, *, train: bool, role: str | None = None,
              source: str | None = None, batch_size: int | None = None, prefetch: int = 2) -> Any:
    """One split as a ``tl_jax.data.Dataset`` prepared the way the weights expect.

    ``train``: the training transform (augmentation, endless epochs) or one exact eval pass;
    ``role`` (default: ``"train"`` when ``train``): which split's source options apply.
    """
    from tl_jax.data import make_dataset

    if source is not None and source != config.data.source:
        config = override(config, {"data.source": source})
    return make_dataset(config.data.source, split, batch_size=int(batch_size or config.batch_size), train=train,
                        preprocessing=metadata["preprocessing"], image_size=image_size(config, metadata),
                        resize_size=int(config.data.resize_size) or None,
                        scale=(float(config.data.min_crop_area), 1.0), seed=int(config.seed), prefetch=prefetch,
                        **data_options(config, role or ("train" if train else "eval")))


# --------------------------------------------------------------------------- weights and model
def weights_metadata(config: Any) -> dict[str, Any]:
    """The weights' ``metadata.json``, or the registry's equivalent for a random initialisation."""
    from tl_jax.weights import store

    if config.weights:
        return store.read_metadata(config.weights)
    return store.build_metadata(config.model.arch, config.model.source, None, class_names=None)


def compute_dtype(config: Any) -> Any:
    import jax.numpy as jnp

    try:
        return jnp.dtype(config.model.dtype)
    except TypeError as e:
        raise ValueError(f"model.dtype {config.model.dtype!r} is not a dtype (use float32 or bfloat16)") from e


def init_variables(model: Any, size: int, seed: int = 0) -> dict[str, Any]:
    """Random variables with Flax's default initialisers, drawn on the host with numpy.

    Same distributions as ``model.init`` (LeCun-normal truncated kernels, zero biases, unit
    BatchNorm scale and variance, zero means) without compiling the initialiser, which takes
    about 15 s for a ResNet on a small CPU. ``seed`` makes it deterministic.
    """
    import jax

    from tl_jax.freeze import path_str

    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.float32))
    rng = np.random.default_rng(seed)
    fills = {"bias": np.zeros, "mean": np.zeros, "scale": np.ones, "var": np.ones}

    def fill(path, x):
        name = path_str(path).rsplit("/", 1)[-1]
        if name == "kernel":  # variance_scaling(1, "fan_in", "truncated_normal"): redraw beyond 2 sigma
            z = rng.standard_normal(x.shape)
            while (bad := np.abs(z) > 2).any():
                z[bad] = rng.standard_normal(int(bad.sum()))
            std = math.sqrt(1.0 / int(np.prod(x.shape[:-1]))) / 0.87962566103423978
            return (z * std).astype(x.dtype)
        if name not in fills:
            raise ValueError(f"init_variables: no initialiser for {path_str(path)!r}")
        return fills[name](x.shape, x.dtype)
    return jax.tree_util.tree_map_with_path(fill, dict(shapes))


def build_model(config: Any, metadata: Mapping[str, Any], num_classes: int) -> tuple[Any, dict[str, Any]]:
    """(model, variables): the converted weights with a fresh ``num_classes`` head, or a random init."""
    from tl_jax.models import registry
    from tl_jax.weights.store import load_pretrained

    dtype = compute_dtype(config)
    if config.weights:
        model, variables, _ = load_pretrained(config.weights, num_classes, int(config.seed), dtype=dtype)
    else:
        model = registry.create(metadata["arch"], metadata["source"], num_classes=num_classes, dtype=dtype)
        variables = init_variables(model, image_size(config, metadata), int(config.seed))
    if config.model.head_init == "zeros":  # every class starts equally likely, whatever the feature scale
        head = {k: np.zeros_like(v) for k, v in variables["params"]["head"].items()}
        variables = {**variables, "params": {**variables["params"], "head": head}}
    return model, variables


def freeze_spec(config: Any, stage_names: Sequence[str]) -> Any:
    """``config.freeze`` as a ``FreezeSpec`` (``frozen_depth=-1``: every backbone stage, only the head trains)."""
    from tl_jax.freeze import FreezeSpec

    return FreezeSpec.from_config(config.freeze, stage_names)


def optim_config(config: Any, steps_per_epoch: int) -> Any:
    from tl_jax.optim import OptimConfig

    return OptimConfig.from_config(config.optim,
                                   warmup_steps=int(round(config.optim.warmup_epochs * steps_per_epoch)))


def num_steps(config: Any, steps_per_epoch: int) -> int:
    return int(config.num_steps) or max(1, int(round(config.num_epochs * steps_per_epoch)))


# --------------------------------------------------------------------------- logging
class TensorBoard:
    """Scalars as a TensorBoard event file, written with tensorboard's protobufs only.

    ``tensorboard``'s own writers import TensorFlow when it is installed (several seconds);
    the event file format is just length-prefixed, CRC-checked ``Event`` records.
    Disabled with a warning when the ``tensorboard`` package is missing.
    """

    def __init__(self, logdir: str):
        self.logdir, self._writer = logdir, None
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError:
            warnings.warn("tensorboard is not installed: no TensorBoard logs (metrics.jsonl has everything)")
            return
        self._event, self._summary, self._record_writer = event_pb2.Event, summary_pb2.Summary, RecordWriter

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not hasattr(self, "_event"):
            return
        if self._writer is None:
            os.makedirs(self.logdir, exist_ok=True)
            name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}.tl_jax"
            self._writer = self._record_writer(open(os.path.join(self.logdir, name), "wb"))
            self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))
        summary = self._summary(value=[self._summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def _write(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RunLogger:
    """``log_fn`` for ``fit``: metrics.jsonl, TensorBoard, the progress bar, and throughput.

    Throughput counts only "clean" intervals between two consecutive train logs: the first
    interval of a session (compilation) and intervals that contain an eval are left out.
    """

    def __init__(self, workdir: str, *, batch_size: int, total_steps: int, start_step: int = 0,
                 progress: bool | None = None, echo: bool = True, tensorboard: bool = True):
        import jax

        from tl_jax.loop import JsonlLogger

        lead = jax.process_index() == 0
        self.batch_size, self.echo = batch_size, echo and lead
        self.jsonl = JsonlLogger(os.path.join(workdir, METRICS), echo=False)
        self.tb = TensorBoard(os.path.join(workdir, TENSORBOARD)) if tensorboard and lead else None
        self.bar = None
        if progress is None:  # a bar when stderr is a terminal
            progress = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        if progress and lead:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=True)
        self.clean_steps, self.clean_seconds = 0, 0.0
        self._prev: dict[str, Any] | None = None
        self._postfix: dict[str, str] = {}

    def __call__(self, record: dict[str, Any]) -> None:
        record = {**record, "time": round(time.time(), 3)}
        if record.get("split") == "train":
            record["images_per_s"] = record["steps_per_s"] * self.batch_size
            prev = self._prev
            if prev is not None and prev.get("split") == "train":
                n = record["step"] - prev["step"]
                self.clean_steps += n
                self.clean_seconds += n / max(record["steps_per_s"], 1e-12)
            self._postfix.update(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
        elif record.get("split") == "eval":
            self._postfix.update(eval_top1=f"{record['top1']:.4f}")
        self._prev = record
        self.jsonl(record)
        if self.tb is not None and "split" in record:
            keys = ("loss", "top1", "top5", "lr", "images_per_s")
            self.tb.scalars(record["step"], {f"{record['split']}/{k}": record[k] for k in keys if k in record})
        if self.bar is not None:
            self.bar.set_postfix(self._postfix, refresh=False)
        if self.echo and (record.get("split") == "eval" or "event" in record):
            self.write(json.dumps(record, sort_keys=True))

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def steps(self, it: Iterator[Any]) -> Iterator[Any]:
        """The training batches, advancing the progress bar as ``fit`` takes each one."""
        for item in it:
            if self.bar is not None:
                self.bar.update(1)
            yield item

    def throughput(self) -> float | None:
        """Steady-state steps/s of this session (None when no clean interval was measured)."""
        return self.clean_steps / self.clean_seconds if self.clean_steps else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, METRICS)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_history(records: Sequence[Mapping[str, Any]], upto: int | None = None) -> dict[int, dict[str, Any]]:
    """Eval records by step; a step evaluated again after a restart keeps its latest record."""
    out = {}
    for r in records:
        if r.get("split") == "eval" and (upto is None or r["step"] <= upto):
            out[int(r["step"])] = dict(r)
    return out


def total_wall_time(records: Sequence[Mapping[str, Any]]) -> float:
    """Sum over sessions of (last record - session start): restarts count only the time spent."""
    total, start, last = 0.0, None, None
    for r in records:
        if r.get("event") == "session":
            if start is not None and last is not None:
                total += last - start
            start, last = r.get("started", r["time"]), r["time"]
        elif "time" in r:
            last = r["time"]
    if start is not None and last is not None:
        total += last - start
    return total


# --------------------------------------------------------------------------- run files
def _write_json(path: str, obj: Any) -> None:
    """Atomic write; in a multi-process run only process 0 writes the run files."""
    if "jax" in sys.modules and sys.modules["jax"].process_index() != 0:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def read_result(workdir: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, RESULT)
    return read_json(path) if os.path.isfile(path) else None


@dataclasses.dataclass
class Run:
    """Everything ``train`` builds before training (also what evaluate/predict rebuild)."""
    config: Any
    metadata: dict[str, Any]
    train_data: Any
    eval_data: Any | None
    model: Any
    variables: dict[str, Any]
    spec: Any
    optim: Any
    num_steps: int
    info: dict[str, Any]


def prepare(config: Any) -> Run:
    """Weights metadata -> data -> model and variables -> freeze spec -> optimizer settings."""
    validate(config)
    metadata = weights_metadata(config)
    validate(config, metadata["stage_names"])
    train_data = make_data(config, metadata, config.data.train_split, train=True)
    eval_data = make_data(config, metadata, config.data.eval_split, train=False) if config.data.eval_split else None
    classes = train_data.num_classes
    if config.data.num_classes and config.data.num_classes != classes:
        raise ValueError(f"config.data.num_classes={config.data.num_classes} but {config.data.source} "
                         f"{config.data.train_split!r} has {classes} classes")
    if eval_data is not None and eval_data.num_classes != classes:
        raise ValueError(f"the eval split {config.data.eval_split!r} has {eval_data.num_classes} classes, "
                         f"the train split {classes}")
    model, variables = build_model(config, metadata, classes)
    spec = freeze_spec(config, metadata["stage_names"])
    spec.check(variables["params"])
    steps_per_epoch = train_data.steps_per_epoch
    optim = optim_config(config, steps_per_epoch)
    total = num_steps(config, steps_per_epoch)
    info = {
        "arch": metadata["arch"], "source": metadata["source"], "stage_names": list(metadata["stage_names"]),
        "preprocessing": metadata["preprocessing"], "image_size": train_data.image_size,
        "num_classes": classes, "class_names": list(train_data.class_names),
        "weights": os.path.abspath(config.weights) if config.weights else "",
        "frozen_depth": spec.frozen_depth, "frozen_stages": list(metadata["stage_names"][:spec.frozen_depth]),
        "num_train_examples": train_data.num_examples,
        "num_eval_examples": eval_data.num_examples if eval_data is not None else 0,
        "steps_per_epoch": steps_per_epoch, "num_steps": total, "warmup_steps": optim.warmup_steps,
        **spec.summary(variables["params"]),
    }
    return Run(config, metadata, train_data, eval_data, model, variables, spec, optim, total, info)


# --------------------------------------------------------------------------- training
def train(config: Any, workdir: str, *, progress: bool | None = None, echo: bool = True,
          stop_at_step: int | None = None) -> dict[str, Any]:
    """Train (or resume, or report) the run of ``config`` in ``workdir``; returns ``result.json``'s content.

    ``stop_at_step``: leave once that many steps are done (for time-sliced jobs); make it a
    multiple of ``checkpoint_every_steps`` or the steps since the last checkpoint are redone.
    Returns ``{"finished": False, "step": ...}`` then. With ``config.feature_cache`` and every
    backbone stage frozen the head trains on cached features (``tl_jax.features``).
    """
    workdir = os.path.abspath(workdir)
    cfg_dict = config_to_dict(config)
    cfg_path = os.path.join(workdir, CONFIG)
    if os.path.isfile(cfg_path):
        _check_same_config(read_json(cfg_path), cfg_dict, workdir)
    done = read_result(workdir)
    if done is not None:
        if echo:
            print(f"{workdir} is finished (result.json): best eval top-1 {done.get('best_eval_top1')}", flush=True)
        return done
    session_start = time.time()
    run = prepare(config)
    os.makedirs(workdir, exist_ok=True)
    _write_json(cfg_path, cfg_dict)  # only once the config proved usable
    _write_json(os.path.join(workdir, RUN), {**run.info, "config": cfg_dict})
    from tl_jax import features

    fast = features.applies(config, run.spec)
    start_step = _latest_step(workdir, fast)
    logger = RunLogger(workdir, batch_size=int(config.batch_size), total_steps=run.num_steps, start_step=start_step,
                       progress=progress, echo=echo, tensorboard=bool(config.get("tensorboard", True)))
    logger({"event": "session", "step": start_step, "path": "feature_cache" if fast else "fit",
            "host": socket.gethostname(), "started": round(session_start, 3)})
    try:
        if fast:
            out = features.train_linear_probe(run, workdir, logger, stop_at_step=stop_at_step)
        else:
            out = _fit(run, workdir, logger, stop_at_step)
    except StopTraining as stop:
        logger({"event": "stopped", "step": int(stop.args[0])})
        logger.close()
        return {"finished": False, "step": int(stop.args[0])}
    except BaseException:
        logger.close()
        raise
    logger({"event": "finished", "step": run.num_steps})
    logger.close()

    records = read_metrics(workdir)
    history = eval_history(records, upto=run.num_steps)
    final = out.get("final_eval") or history.get(run.num_steps)
    best_step = max(history, key=lambda s: (history[s]["top1"], -s)) if history else None
    sps = logger.throughput()
    result = {
        "finished": True, "path": "feature_cache" if fast else "fit",
        "final_eval": _eval_fields(final), "best_eval_top1": history[best_step]["top1"] if history else None,
        "best_eval_step": best_step, "final_eval_top1": final["top1"] if final else None,
        "steps_per_s": sps, "images_per_s": sps * int(config.batch_size) if sps else None,
        "session_wall_s": time.time() - session_start, "wall_s": total_wall_time(records),
        "resumed_from": out.get("start_step", 0), "batch_size": int(config.batch_size),
        **{k: run.info[k] for k in ("arch", "source", "frozen_depth", "frozen_stages", "trainable_params",
                                    "frozen_params", "num_steps", "num_classes", "image_size")},
        **{k: v for k, v in out.items() if k.startswith("feature_")},
    }
    _write_json(os.path.join(workdir, RESULT), result)
    if echo:
        print(f"finished {workdir}: final eval top-1 {result['final_eval_top1']}, best {result['best_eval_top1']} "
              f"(step {best_step}), {result['trainable_params']:,} trainable params, "
              f"{_fmt(result['images_per_s'])} img/s, {result['wall_s']:.1f} s", flush=True)
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _eval_fields(m: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if m is None else {k: m[k] for k in ("step", "loss", "top1", "top5", "count") if k in m}


def _latest_step(workdir: str, fast: bool) -> int:
    """Steps done by earlier sessions (for the progress bar): the newest checkpoint folder."""
    from tl_jax import features

    d = os.path.join(workdir, features.PROBE_CHECKPOINTS if fast else CHECKPOINTS)
    steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
    return max(steps, default=0)


def stopping(batches: Iterator[Any], start: int, stop_at_step: int | None) -> Iterator[Any]:
    """Yield batches for steps ``start, start+1, ...``; raise StopTraining before step ``stop_at_step``."""
    step = start
    try:
        for b in batches:
            if stop_at_step is not None and step >= stop_at_step:
                raise StopTraining(step)
            yield b
            step += 1
    finally:  # stop the data pipeline's prefetch thread (fit drops the endless iterator when done)
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _fit(run: Run, workdir: str, logger: RunLogger, stop_at_step: int | None) -> dict[str, Any]:
    from tl_jax import loop
    from tl_jax.parallel import DataParallel

    c = run.config
    dp = DataParallel(c.parallel, sync_bn=bool(c.sync_bn))
    if int(c.batch_size) % dp.num_devices:
        raise ValueError(f"batch_size {c.batch_size} does not split over {dp.num_devices} devices")

    def train_batches(start: int) -> Iterator[Any]:
        return logger.steps(stopping(run.train_data.batches(start), start, stop_at_step))

    eval_fn = (lambda: run.eval_data.batches(0)) if run.eval_data is not None else None
    spe = run.info["steps_per_epoch"]
    res = loop.fit(run.model, run.variables, freeze=run.spec, optim=run.optim, train_data=train_batches,
                   num_steps=run.num_steps, eval_data=eval_fn,
                   eval_every=max(1, int(round(c.eval_every_epochs * spe))) if c.eval_every_epochs else 0,
                   checkpoint_every=int(c.checkpoint_every_steps), log_every=int(c.log_every_steps),
                   workdir=workdir, parallel=dp, label_smoothing=float(c.label_smoothing), seed=int(c.seed),
                   keep_checkpoints=int(c.keep_checkpoints), log_fn=logger)
    final = res.eval_metrics
    if final is None and eval_fn is not None:  # a restart after the last step: evaluate the restored state
        state = dp.put_state(res.state) if dp.kind == "pmap" else res.state
        final = loop.evaluate(dp, dp.eval_step(), state, eval_fn)
    return {"final_eval": final, "start_step": res.start_step}


# --------------------------------------------------------------------------- restoring a run
@dataclasses.dataclass
class Restored:
    config: Any
    info: dict[str, Any]
    model: Any
    variables: dict[str, Any]
    step: int


def abstract_state(model: Any, spec: Any, optim: Any, size: int, total_steps: int, seed: int = 0) -> Any:
    """The ``TrainState`` a run checkpoints, as shapes only (nothing is computed)."""
    import jax

    from tl_jax.optim import make_optimizer
    from tl_jax.step import TrainState

    def make():
        variables = model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, size, size, 3), jax.numpy.float32))
        tx = make_optimizer(optim, spec, variables["params"], total_steps)
        return TrainState.create(spec.apply_to(model).apply, variables, tx, seed)
    return jax.eval_shape(make)


def restore_run(workdir: str, checkpoint: str | int = "latest") -> Restored:
    """The model and variables of a run's checkpoint: ``"latest"``, ``"best"`` (eval top-1) or a step."""
    import jax

    from tl_jax.checkpoint import Checkpointer
    from tl_jax.models import registry

    workdir = os.path.abspath(workdir)
    for name in (CONFIG, RUN):
        if not os.path.isfile(os.path.join(workdir, name)):
            raise FileNotFoundError(f"{workdir} has no {name}: not a run directory of scripts/train.py")
    config, info = config_from_dict(read_json(os.path.join(workdir, CONFIG))), read_json(os.path.join(workdir, RUN))
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=int(config.keep_checkpoints), async_save=False)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"{workdir}/{CHECKPOINTS} holds no checkpoint (checkpoint_every_steps=0?)")
        if checkpoint == "latest":
            step = steps[-1]
        elif checkpoint == "best":
            step = ckpt.best_step()
            if step is None:
                raise ValueError(f"{workdir}: no checkpoint carries eval metrics; use checkpoint='latest'")
        else:
            step = int(checkpoint)
            if step not in steps:
                raise ValueError(f"{workdir} has no checkpoint at step {step}; it has {steps}")
        model = registry.create(info["arch"], info["source"], num_classes=info["num_classes"],
                                dtype=compute_dtype(config))
        spec = freeze_spec(config, info["stage_names"])
        optim = optim_config(config, info["steps_per_epoch"])
        template = abstract_state(model, spec.at_step(step), optim, info["image_size"], info["num_steps"])
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        restored = ckpt.restore(template, step=step, sharding=device)
    finally:
        ckpt.close()
    _, items, _ = restored
    return Restored(config, info, model, {"params": items["params"], "batch_stats": items["batch_stats"]}, step)


def evaluate_run(workdir: str, checkpoint: str | int = "latest", *, split: str | None = None,
                 source: str | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Exact loss / top-1 / top-5 of a run's checkpoint on a dataset split (default: the run's eval split)."""
    from tl_jax import loop
    from tl_jax.parallel import DataParallel
    from tl_jax.step import TrainState

    r = restore_run(workdir, checkpoint)
    split = split or r.config.data.eval_split
    if not split:
        raise ValueError("the run has no eval split; pass split=")
    metadata = {"preprocessing": r.info["preprocessing"], "input_size": r.info["image_size"]}
    cfg = override(r.config, {"data.image_size": r.info["image_size"]})
    data = make_data(cfg, metadata, split, train=False, source=source, batch_size=batch_size)
    if data.num_classes != r.info["num_classes"]:
        raise ValueError(f"{data.name} {split!r} has {data.num_classes} classes, the model {r.info['num_classes']}")
    dp = DataParallel("none")
    state = TrainState(step=np.int32(r.step), params=r.variables["params"], batch_stats=r.variables["batch_stats"],
                       opt_state=None, rng=None, apply_fn=r.model.apply, tx=None)
    metrics = loop.evaluate(dp, dp.eval_step(), state, lambda: data.batches(0))
    return {"workdir": os.path.abspath(workdir), "checkpoint_step": r.step, "source": data.name, "split": split,
            **{k: metrics[k] for k in ("loss", "top1", "top5", "count")}}


def export(workdir: str, directory: str, checkpoint: str | int = "latest", *, overwrite: bool = False) -> str:
    """Write a run's checkpoint as a weights store (``save_pretrained``), the format of converted weights.

    The metadata carries the run's class names and its preprocessing at the trained image size,
    so ``load_pretrained`` / ``scripts/predict.py --weights`` and further fine-tuning use it as is.
    """
    from tl_jax.weights import store

    r = restore_run(workdir, checkpoint)
    spec = spec_at_size(r.info["preprocessing"], r.info["image_size"])
    metadata = store.build_metadata(r.info["arch"], r.info["source"], r.info["num_classes"],
                                    class_names=r.info["class_names"], preprocessing=spec.to_dict(),
                                    input_size=spec.crop_size, resize_size=spec.resize_size,
                                    trained_in=os.path.abspath(workdir), trained_step=r.step)
    return str(store.save_pretrained(directory, r.variables, metadata, overwrite=overwrite))


# --------------------------------------------------------------------------- prediction
def spec_at_size(preprocessing: Mapping[str, Any] | str, size: int) -> Any:
    """The preprocessing spec with its crop at ``size`` and the resize in the same ratio (as the data pipeline)."""
    from tl_jax import preprocess

    s = preprocess.get_spec(preprocessing)
    if size == s.crop_size:
        return s
    return dataclasses.replace(s, crop_size=size, resize_size=int(round(size * s.resize_size / s.crop_size)))


def load_for_prediction(*, workdir: str | None = None, weights: str | None = None,
                        checkpoint: str | int = "best") -> tuple[Any, dict[str, Any], Any, list[str]]:
    """(model, variables, preprocessing spec, class names) of a run checkpoint or a weights store."""
    if (workdir is None) == (weights is None):
        raise ValueError("give exactly one of workdir (a training run) or weights (a converted-weights directory)")
    if workdir is not None:
        try:
            r = restore_run(workdir, checkpoint)
        except ValueError:
            if checkpoint != "best":
                raise
            r = restore_run(workdir, "latest")
        names = r.info["class_names"] or [f"class_{i}" for i in range(r.info["num_classes"])]
        return r.model, r.variables, spec_at_size(r.info["preprocessing"], r.info["image_size"]), names
    from tl_jax.weights.store import load_pretrained

    model, variables, meta = load_pretrained(weights)
    if meta["num_classes"] is None:
        raise ValueError(f"{weights} holds a backbone without a head: nothing to predict")
    names = meta.get("class_names") or [f"class_{i}" for i in range(meta["num_classes"])]
    return model, variables, spec_at_size(meta["preprocessing"], int(meta["input_size"])), names


def predict(paths: Sequence[str], *, top_k: int = 5, batch_size: int = 32, **load_kw: Any) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for image files (the weights' evaluation preprocessing)."""
    import jax
    from PIL import Image

    from tl_jax import preprocess

    model, variables, spec, names = load_for_prediction(**load_kw)
    k = min(top_k, len(names))
    forward = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False).astype(np.float32), axis=-1))
    out = []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        images = []
        for p in chunk:
            with Image.open(p) as im:
                images.append(preprocess.prepare(im, spec))
        x = np.stack(images)
        pad = batch_size - len(chunk) if len(paths) > batch_size else 0  # one compiled shape for long lists
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        probs = np.asarray(forward(variables, x))[:len(chunk)]
        for p, row in zip(chunk, probs):
            top = np.argsort(-row, kind="stable")[:k]
            out.append({"image": p, "top_k": [{"class": names[j], "index": int(j), "prob": float(row[j])}
                                              for j in top]})
    return out


# --------------------------------------------------------------------------- command lines
def main_with_clean_errors(main):
    """Wrap a script's ``main``: a missing file (weights, run, image) is one line, not a traceback."""
    def wrapped(argv):
        try:
            return main(argv)
        except FileNotFoundError as e:
            sys.exit(f"{os.path.basename(sys.argv[0])}: {e}")
    return wrapped


def parse_flags(argv: list[str]) -> list[str]:
    """absl ``flags_parser`` for the scripts: a bad ``--config.x=y`` exits with one clear line.

    ml_collections raises AttributeError (with a "did you mean" hint) for an unknown field of a
    locked config, which absl would show as a traceback.
    """
    from absl import flags, logging

    try:
        rest = flags.FLAGS(argv)
        if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
            logging.set_verbosity(logging.WARNING)
        return rest
    except flags.Error as e:
        sys.exit(f"{os.path.basename(argv[0])}: {e}\nPass --helpfull to see the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        text = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'").replace('\\"', '"')
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        sys.exit(f"{os.path.basename(argv[0])}: bad config override ({text}); overrides given: {' '.join(bad)}")


__all__ = ["Restored", "Run", "RunLogger", "StopTraining", "TensorBoard", "abstract_state", "build_model",
           "config_from_dict", "config_to_dict", "data_options", "evaluate_run", "export", "freeze_spec",
           "init_variables", "load_config", "load_for_prediction", "main_with_clean_errors", "make_data",
           "optim_config", "override",
           "parse_flags", "predict", "prepare", "read_metrics", "read_result", "restore_run", "train", "validate",
           "weights_metadata"]
