"""Training-step throughput of tl_jax at given frozen depths, optionally beside the torchvision step.

Synthetic data already on the devices, the step compiled ahead of time, a warm-up, then the median
of timed chunks of steps (one host sync per chunk). Each record also says what freezing saves:
trainable vs frozen parameters, optimizer-state bytes and the convolutions left in the compiled
step (XLA drops the backward pass of frozen stages). Needs only jax/flax/optax (+ torch and
torchvision for the peers): no TensorFlow, tfds or ml_collections, so it runs on a bare GPU machine.

``fold_bn`` builds the model with ``fold_frozen_bn`` (frozen conv + BatchNorm computed as one
convolution); each record says which (``fold_bn``) and counts the activation-shaped multiplies left in
the compiled step (``activation_multiplies``), which is how a per-channel BatchNorm scale shows up.

Peers, timed in the same process (see :data:`PEER_FIELDS`): ``torch`` (the eager torchvision step, in
``peer`` with ``ratio_vs_torch``, as in older records) and ``torch_compile`` (the same step under
``torch.compile``, in ``peer_compile`` with its compile time and ``ratio_vs_torch_compile``). Both sides
compute in the same precision: with ``dtype="bfloat16"`` tl_jax computes in bf16 and the torch peers run
under ``torch.autocast(..., dtype=torch.bfloat16)`` (on CPU as on CUDA); each peer carries ``dtype`` and
``autocast`` next to its ratio.
"""
from __future__ import annotations

import json
import platform
import re
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax import optim, tree
from tl_jax.bench import torch_peer
from tl_jax.freeze import FreezeSpec
from tl_jax.models import registry
from tl_jax.models.init import init_variables
from tl_jax.parallel import KINDS, DataParallel
from tl_jax.step import TrainState

DTYPES = ("bfloat16", "float32")
# Peer name -> the record field holding its result; its ratio is ``ratio_vs_<name>``.
PEER_FIELDS = {"torch": "peer", "torch_compile": "peer_compile"}
PEERS = tuple(PEER_FIELDS)
PARALLEL_KINDS = KINDS


def training_model(config: registry.ModelConfig, spec: FreezeSpec, dp: DataParallel, *, num_classes: int,
                   dtype: str, fold_bn: bool = True) -> Any:
    """The Flax module as it trains: ``spec``'s frozen stages, BatchNorm synced the way ``dp`` runs,
    frozen BatchNorm folded into its convolution with ``fold_bn``."""
    model = config.build(num_classes=num_classes, dtype=jnp.dtype(dtype), fold_frozen_bn=fold_bn)
    return model.for_training(spec.frozen_stages, dp.bn_axis_name)


def parse_peers(peer: str | Sequence[str]) -> tuple[str, ...]:
    """``"torch,torch_compile"`` (or a list of names) as a tuple of known peer names, in order, once each."""
    names = peer.split(",") if isinstance(peer, str) else list(peer)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in PEER_FIELDS]
    if unknown:
        raise ValueError(f"unknown peer {unknown[0]!r}; choose among {', '.join(PEERS)}")
    return tuple(dict.fromkeys(names))


def count_convolutions(hlo_text: str) -> int:
    """Convolutions in compiled HLO text: XLA ``convolution`` ops, or the cuDNN calls they become on GPU."""
    return hlo_text.count("convolution(") + hlo_text.count('custom_call_target="__cudnn$conv')


# An HLO instruction producing a rank-4 array, e.g. ``%multiply.3 = f32[8,16,16,64]{3,2,1,0} multiply(``.
_RANK4_MULTIPLY = re.compile(r"= *[a-z]+[0-9]*\[(\d+),\d+,\d+,\d+\]\S* +multiply\(")


def count_activation_multiplies(hlo_text: str, batch: int) -> int:
    """``multiply`` instructions in compiled HLO text (fused computations included) whose result is
    activation-shaped: rank 4 with ``batch`` (per device) leading. Inference BatchNorm leaves such a
    multiply (its per-channel scale) after its convolution; folded into the kernel, it is kernel-shaped
    instead, so it is not counted. The backward pass of trainable stages has its own. (A batch equal
    to a kernel's height, e.g. 1, 3 or 7, would also count the folded kernels.)"""
    return sum(int(m.group(1)) == batch for m in _RANK4_MULTIPLY.finditer(hlo_text))


def _peak_memory() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _timed(fn: Callable[[int], None], chunks: int, steps_per_chunk: int) -> list[float]:
    """Seconds per step for each chunk; one host sync per chunk, none inside it."""
    out = []
    for _ in range(chunks):
        t = time.perf_counter()
        fn(steps_per_chunk)
        out.append((time.perf_counter() - t) / steps_per_chunk)
    return out


def _check(dtype: str, parallel: str, steps: int, chunks: int) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if parallel not in KINDS:
        raise ValueError(f"unknown parallel {parallel!r}; choose one of {', '.join(KINDS)}")
    if steps < 1 or chunks < 1:
        raise ValueError(f"need steps >= 1 and chunks >= 1, got {steps} and {chunks}")


def bench_step(arch: str, source: str, frozen_depth: int, *, batch: int, resolution: int, dtype: str,
               parallel: str, steps: int, chunks: int, num_classes: int, seed: int = 0, fold_bn: bool = True,
               variables: Any = None) -> dict[str, Any]:
    """One tl_jax training step at ``frozen_depth``: images/s (median of ``chunks`` chunks of ``steps``
    steps), compile time, peak device memory, optimizer-state bytes, parameter counts, and the
    convolutions and activation-shaped multiplies in the compiled step. ``fold_bn``: the model's
    ``fold_frozen_bn``. ``variables``: host variables (default: ``tl_jax.models.init.init_variables``,
    drawn here; folding changes no variable)."""
    _check(dtype, parallel, steps, chunks)
    config = registry.model_config(arch, source)
    spec = FreezeSpec(config.stage_names, frozen_depth)
    dp = DataParallel(kind=parallel)
    model = training_model(config, spec, dp, num_classes=num_classes, dtype=dtype, fold_bn=fold_bn)
    if variables is None:
        variables = init_variables(config.build(num_classes=num_classes), resolution, seed)
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = optim.make_optimizer(optim.OptimConfig(name="sgd", learning_rate=0.01, momentum=0.9), spec, params,
                              total_steps=10_000)
    state = TrainState.create(model.apply, variables, tx, rng=seed)
    opt_bytes = tree.num_bytes(state.opt_state)
    counts = spec.summary(params)
    state = dp.put_state(state)
    rng = np.random.default_rng(seed)
    batch_np = {"image": rng.standard_normal((batch, resolution, resolution, 3), np.float32),
                "label": rng.integers(0, num_classes, (batch,)).astype(np.int32)}
    batch_dev = dp.put_batch(batch_np)

    t = time.perf_counter()
    train = dp.train_step(frozen_stats=spec.frozen_stats(params, stats)).lower(state, batch_dev).compile()
    compile_s = time.perf_counter() - t
    hlo = train.as_text()
    convolutions = count_convolutions(hlo)
    multiplies = count_activation_multiplies(hlo, batch // dp.num_devices)
    holder = {"state": state}

    def run_steps(n: int) -> None:
        s = holder["state"]
        for _ in range(n):
            s, m = train(s, batch_dev)
        jax.block_until_ready(m)
        holder["state"] = s

    run_steps(2)  # warm-up
    per_step = _timed(run_steps, chunks, steps)
    med = statistics.median(per_step)
    return {"impl": "tl_jax", "arch": config.arch, "source": source, "frozen_depth": spec.frozen_depth, "batch": batch,
            "resolution": resolution, "dtype": dtype, "fold_bn": fold_bn, "parallel": parallel,
            "devices": dp.num_devices,
            "img_s": batch / med, "step_ms": med * 1e3, "step_ms_all": [round(s * 1e3, 3) for s in per_step],
            "compile_s": compile_s, "peak_bytes": _peak_memory(), "opt_state_bytes": opt_bytes,
            "convolutions": convolutions, "activation_multiplies": multiplies, **counts}


def environment() -> dict[str, Any]:
    """What the numbers were measured with (added to every record)."""
    return {"jax": jax.__version__, "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "device_count": jax.device_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def run(arch: str = "resnet50", source: str = "torchvision", depths: Sequence[int] = (0, 4, 5), *,
        batch: int = 256, resolution: int = 224, dtype: str = "bfloat16", parallel: str = "shard_map",
        steps: int = 20, chunks: int = 3, num_classes: int = 1000, peer: str | Sequence[str] = "",
        fold_bn: bool = True, out: str = "", seed: int = 0, echo: bool = True) -> list[dict[str, Any]]:
    """:func:`bench_step` at each of ``depths``, each beside the peers ``peer`` names (``"torch"``,
    ``"torch_compile"`` or both, comma-separated; :func:`parse_peers`): the peer's result in its
    :data:`PEER_FIELDS` field and ``ratio_vs_<peer>`` = tl_jax img/s / peer img/s (same compute dtype on
    both sides; ``None`` where the peer reports an ``error``). With depth 0 among ``depths``, later
    records get ``speedup_vs_full``. ``echo`` prints the environment and each record as JSON lines as
    they come; ``out`` also writes the list of records there as JSON."""
    _check(dtype, parallel, steps, chunks)
    peers = parse_peers(peer)
    config = registry.model_config(arch, source)
    # Fails before any compilation on a depth the model does not have; -1 becomes the head-only depth.
    depths = [FreezeSpec(config.stage_names, int(d)).frozen_depth for d in depths]
    env = environment()
    if echo:
        print(json.dumps({"env": env}), flush=True)
    results: list[dict[str, Any]] = []
    variables = init_variables(config.build(num_classes=num_classes), resolution, seed)
    full_img_s = None
    for depth in depths:
        r = bench_step(config.arch, source, depth, batch=batch, resolution=resolution, dtype=dtype,
                       parallel=parallel, steps=steps, chunks=chunks, num_classes=num_classes, seed=seed,
                       fold_bn=fold_bn, variables=variables)
        if depth == 0:
            full_img_s = r["img_s"]
        elif full_img_s is not None:
            r["speedup_vs_full"] = r["img_s"] / full_img_s
        for name in peers:
            p = torch_peer.time_torch_step(config.arch, depth, batch=batch, resolution=resolution,
                                           steps=steps * chunks, num_classes=num_classes, dtype=dtype,
                                           compiled=name == "torch_compile")
            r[PEER_FIELDS[name]] = p
            r[f"ratio_vs_{name}"] = r["img_s"] / p["img_s"] if "img_s" in p else None
        r.update(env)
        results.append(r)
        if echo:
            print(json.dumps(r), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    return results
