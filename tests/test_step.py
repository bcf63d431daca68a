"""Train/eval steps on the real ResNet and VGG ports: freezing is exact and saves work."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine_worker import random_variables
from tl_jax import models
from tl_jax.freeze import FreezeSpec
from tl_jax.optim import OptimConfig, make_optimizer
from tl_jax.tree import num_bytes, path_str
from tl_jax.step import TrainState, cross_entropy, eval_step, summarize_eval, train_step

SIZE, BATCH, CLASSES = 32, 4, 10


@functools.lru_cache(maxsize=2)
def _variables(arch: str):
    model = models.create(arch, "torchvision", num_classes=CLASSES)
    return random_variables(model, SIZE if arch != "inception_v3" else 75, seed=1)


def _batch(seed: int = 0, n: int = BATCH, size: int = SIZE):
    r = np.random.RandomState(seed)
    return {"image": r.randn(n, size, size, 3).astype(np.float32), "label": r.randint(0, CLASSES, n).astype(np.int32)}


def _setup(arch: str, spec_kw: dict, abstract: bool = False, optim: str = "sgd", **model_kw):
    """(spec, state, jitted step without donation) for ``arch`` frozen as ``spec_kw`` says."""
    base = models.create(arch, "torchvision", num_classes=CLASSES, **model_kw)
    spec = FreezeSpec(base.stage_names, **spec_kw)
    model = base.for_training(spec.frozen_stages, None)
    variables = _variables(arch)
    tx = make_optimizer(OptimConfig(name=optim, learning_rate=0.01, momentum=0.9, weight_decay=1e-4),
                        spec, variables["params"], 100)
    make = lambda: TrainState.create(model.apply, variables, tx, 0)  # noqa: E731
    state = jax.eval_shape(make) if abstract else make()
    step = jax.jit(functools.partial(train_step, frozen_stats=spec.frozen_stats(variables["params"],
                                                                                 variables.get("batch_stats", {}))))
    return spec, state, step


def _convolutions(arch: str, spec_kw: dict, size: int = 64) -> int:
    """Convolutions in the compiled train step (shapes only: nothing is allocated).

    At 64 px no ResNet map is 1x1 (where layers.conv computes a matrix product instead), so every
    convolution of the model is counted as one.
    """
    _, state, step = _setup(arch, spec_kw, abstract=True)
    return step.lower(state, _batch(size=size)).compile().as_text().count("convolution(")


def _flat(tree):
    return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_frozen_exact(spec, before, after, stats_before, stats_after):
    after, stats_after = _flat(after), _flat(stats_after)
    for path, old in _flat(before).items():
        new = after[path]
        if spec.is_frozen(path):
            np.testing.assert_array_equal(new, old, err_msg=f"frozen {path} moved")
        else:
            assert not np.array_equal(new, old), f"trainable {path} did not change"
    keep = spec.frozen_stats(before, stats_before)
    for path, old in _flat(stats_before).items():
        if path in keep:
            np.testing.assert_array_equal(stats_after[path], old, err_msg=f"frozen stats {path} moved")
        else:
            assert not np.array_equal(stats_after[path], old), f"trainable stats {path} did not change"


CASES = [("resnet18", 2), ("resnet18", 5), ("vgg11", 3), ("vgg11", 6), ("vgg11_bn", 2)]


@pytest.mark.slow
@pytest.mark.parametrize("arch,depth", CASES)
def test_frozen_leaves_and_stats_bit_identical(arch, depth):
    spec, state, step = _setup(arch, {"frozen_depth": depth})
    params0, stats0 = jax.tree.map(np.array, (state.params, state.batch_stats))
    for i in range(3):
        state, metrics = step(state, _batch(i))
    assert np.isfinite(float(metrics["loss"]))
    _check_frozen_exact(spec, params0, state.params, stats0, state.batch_stats)
    trainable = sum(x.nbytes for p, x in _flat(params0).items() if not spec.is_frozen(p))
    opt_bytes = num_bytes(state.opt_state)
    print(f"\n{arch} frozen_depth={depth}: optimizer state {opt_bytes:,} B, trainable params {trainable:,} B, "
          f"all params {num_bytes(state.params):,} B")
    assert trainable <= opt_bytes <= trainable + 64   # one momentum slot per trainable leaf, plus counters
    if arch == "vgg11" and depth < 6:   # the classifier trains with dropout, keyed by (state.rng, step)
        _, a = step(state, _batch())
        _, b = step(state, _batch())
        _, c = step(state.replace(step=state.step + 1), _batch())
        assert float(a["loss"]) == float(b["loss"]) != float(c["loss"])


# Surgical fine-tuning (one stage trains; the head too is frozen), per family, with Adam (2 slots) or SGD.
SURGICAL = [("resnet18", "layer2", "sgd", 1), ("vgg11_bn", "block3", "adamw", 2),
            ("inception_v3", "mixed6b", "adamw", 2)]


@pytest.mark.slow
@pytest.mark.parametrize("arch,stage,optim,slots", SURGICAL, ids=[c[0] for c in SURGICAL])
def test_one_trainable_stage_moves_alone_with_its_optimizer_state_and_no_backward_below(arch, stage, optim, slots):
    size = 75 if arch == "inception_v3" else SIZE
    spec, state, step = _setup(arch, {"trainable_stages": (stage,)}, optim=optim)
    params0, stats0 = jax.tree.map(np.array, (state.params, state.batch_stats))
    for i in range(3):
        state, metrics = step(state, _batch(i, size=size))
    assert np.isfinite(float(metrics["loss"]))
    params, stats = _flat(state.params), _flat(state.batch_stats)
    for path, old in _flat(params0).items():
        moved = not np.array_equal(params[path], old)
        assert moved == path.startswith(stage + "/"), path
    for path, old in _flat(stats0).items():
        moved = not np.array_equal(stats[path], old)
        assert moved == path.startswith(stage + "/"), path
    trainable = sum(x.nbytes for p, x in _flat(params0).items() if p.startswith(stage + "/"))
    scalars = sum(x.nbytes for x in jax.tree.leaves(state.opt_state) if x.ndim == 0)
    assert num_bytes(state.opt_state) - scalars == slots * trainable
    if arch != "resnet18":
        return
    # Compiled work: below layer2 no backward at all (as with stem+layer1 frozen); above it the input
    # gradients flow through the frozen stages but their weight gradients are gone: one convolution
    # fewer for each convolution of layer3 and layer4 (two per block plus the downsample: 10).
    counts = {kw: _convolutions(arch, dict(kw)) for kw in
              ((("frozen_depth", 0),), (("frozen_depth", 2),), (("trainable_stages", ("layer2",)),))}
    full, below, surgical = counts.values()
    print(f"\nresnet18 convolutions: full {full}, stem+layer1 frozen {below}, only layer2 trains {surgical}")
    assert surgical == below - 10 and below < full


@pytest.mark.slow
@pytest.mark.parametrize("arch,depths", [("resnet18", (0, 1, 3, 5)), ("vgg11", (0, 3, 6))])
def test_compiled_step_does_less_work_when_frozen(arch, depths):
    counts = {d: _convolutions(arch, {"frozen_depth": d}) for d in depths}
    print(f"\n{arch} convolutions in the compiled train step by frozen depth: {counts}")
    assert all(counts[a] > counts[b] for a, b in zip(depths, depths[1:])), counts


@pytest.mark.slow
def test_regex_freezing_inside_a_trainable_stage():
    kw = {"frozen_depth": 4, "patterns": (r"^layer4/block0/(conv1|bn1)/",)}
    spec, state, step = _setup("resnet18", kw)
    params0, stats0 = jax.tree.map(np.array, (state.params, state.batch_stats))
    for i in range(2):
        state, _ = step(state, _batch(i))
    _check_frozen_exact(spec, params0, state.params, stats0, state.batch_stats)
    assert {"layer4/block0/bn1/mean", "layer4/block0/bn1/var"} <= spec.frozen_stats(params0, stats0)
    # The frozen kernel's weight gradient is dead code once set_to_zero drops it: XLA removes it.
    by_depth, with_pattern = _convolutions("resnet18", {"frozen_depth": 4}), _convolutions("resnet18", kw)
    print(f"\nresnet18 depth 4 convolutions: {by_depth}; plus layer4/block0/conv1 frozen: {with_pattern}")
    assert with_pattern < by_depth


@pytest.mark.slow
def test_bf16_compute_keeps_float32_params_stats_and_loss():
    spec, state, step = _setup("resnet18", {"frozen_depth": 4}, dtype=jnp.bfloat16)
    model32 = models.create("resnet18", "torchvision", num_classes=CLASSES).for_training(spec.frozen_stages, None)
    # 16 images: with 4, layer4's batch statistics (1x1 maps at 32 px) come from 4 values per channel,
    # and bf16 rounding moves them (and the loss) by several percent on either convolution path.
    batch = _batch(n=16)
    logits32, _ = jax.jit(functools.partial(model32.apply, train=True, mutable=["batch_stats"]))(
        state.variables, batch["image"])
    loss32 = float(cross_entropy(logits32, batch["label"]).mean())
    new, metrics = step(state, batch)
    for leaf in jax.tree.leaves((new.params, new.batch_stats, new.opt_state, metrics)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert new.apply_fn(new.variables, batch["image"]).dtype == jnp.float32
    assert abs(float(metrics["loss"]) - loss32) < 0.05 * loss32, (float(metrics["loss"]), loss32)


def test_eval_step_sums_exactly_over_the_mask():
    spec, state, _ = _setup("resnet18", {"frozen_depth": 5})
    batch = _batch(7, n=6)
    batch["mask"] = np.array([1, 1, 0, 1, 1, 0], np.float32)
    sums = jax.jit(functools.partial(eval_step, apply_fn=state.apply_fn))(state.variables, batch)
    logits = np.asarray(state.apply_fn(state.variables, batch["image"][batch["mask"] > 0]), np.float64)
    labels = batch["label"][batch["mask"] > 0]
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    order = np.argsort(-logits, axis=1)
    np.testing.assert_allclose(float(sums["loss_sum"]), -logp[np.arange(4), labels].sum(), rtol=1e-5)
    assert float(sums["correct1"]) == (order[:, 0] == labels).sum()
    assert float(sums["correct5"]) == (order[:, :5] == labels[:, None]).any(1).sum()
    assert float(sums["count"]) == 4
    assert summarize_eval(sums)["count"] == 4


def test_label_smoothing_cross_entropy_matches_formula():
    r = np.random.RandomState(0)
    logits, labels, eps = r.randn(5, 7).astype(np.float32), r.randint(0, 7, 5), 0.1
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    target = np.full((5, 7), eps / 7) + (1 - eps) * np.eye(7)[labels]
    np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps),
                               -(target * logp).sum(1), rtol=1e-5)
    np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(labels)),
                               -logp[np.arange(5), labels], rtol=1e-5)


def test_a_float64_step_keeps_the_state_type():
    """Computed in float64, BatchNorm statistics are stored back in float32: every leaf of the state keeps
    its shape and dtype, so the second step reuses the first one's program."""
    with jax.enable_x64(True):
        _, state, step = _setup("resnet18", {"frozen_depth": 3}, dtype=jnp.float64)
        types = lambda s: jax.tree.map(lambda a: (np.shape(a), np.asarray(a).dtype), s)  # noqa: E731
        before = types(state)
        for i in range(2):
            state, _ = step(state, _batch(i))
        assert types(state) == before
