"""FreezeSpec labels and the optimizer built from them (fast: shapes and small trees only)."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tl_jax import models
from tl_jax.freeze import FROZEN, TRAINABLE, FreezeSpec
from tl_jax.optim import OptimConfig, make_optimizer, transfer_opt_state
from tl_jax.tree import leaf_paths, num_bytes, path_str


@pytest.fixture(scope="module")
def resnet18_shapes():
    model = models.create("resnet18", "torchvision", num_classes=10)
    return model, jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def _flat_labels(spec, params):
    return {path_str(p): lab for p, lab in jax.tree_util.tree_flatten_with_path(spec.labels(params))[0]}


def _bytes_where(params, spec, frozen: bool) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
               if spec.is_frozen(path_str(p)) == frozen)


@pytest.mark.parametrize("depth", range(6))
def test_depth_freezes_the_first_stages(resnet18_shapes, depth):
    model, variables = resnet18_shapes
    spec = FreezeSpec(model.stage_names, depth)
    for path, label in _flat_labels(spec, variables["params"]).items():
        stage = model.stage_names.index(path.split("/")[0])
        assert label == (FROZEN if stage < depth else TRAINABLE), path
    # One source of truth: the model the loop trains gets the spec's frozen stages.
    assert model.for_training(spec.frozen_stages, None).frozen_stages == model.stage_names[:depth]
    assert spec.prefix_depth == depth


def test_depth_bounds_and_linear_probe(resnet18_shapes):
    model, variables = resnet18_shapes
    probe = FreezeSpec(model.stage_names, -1)
    assert probe.frozen_depth == len(model.stage_names) - 1
    assert {p.split("/")[0] for p, lab in _flat_labels(probe, variables["params"]).items() if lab == TRAINABLE} \
        == {"head"}
    for bad in (6, -2):
        with pytest.raises(ValueError, match="frozen_depth"):
            FreezeSpec(model.stage_names, bad)


def test_patterns_freeze_leaves_and_typos_fail(resnet18_shapes):
    model, variables = resnet18_shapes
    spec = FreezeSpec(model.stage_names, 0, patterns=(r"^layer2/block0/(conv1|bn1)/", r"/downsample_bn/scale$"))
    labels = _flat_labels(spec, variables["params"])
    frozen = sorted(p for p, lab in labels.items() if lab == FROZEN)
    assert frozen == sorted(["layer2/block0/conv1/kernel", "layer2/block0/bn1/scale", "layer2/block0/bn1/bias",
                             *(f"layer{i}/block0/downsample_bn/scale" for i in (2, 3, 4))])
    with pytest.raises(ValueError, match="matches no parameter"):
        FreezeSpec(model.stage_names, 0, patterns=("layer9",)).labels(variables["params"])
    with pytest.raises(ValueError, match="matches no parameter"):
        FreezeSpec(model.stage_names, 0, lr_mults=(("^stem/conv9", 0.1),)).labels(variables["params"])


def test_frozen_stats_follow_depth_and_fully_frozen_batchnorm(resnet18_shapes):
    model, variables = resnet18_shapes
    params, stats = variables["params"], variables["batch_stats"]
    spec = FreezeSpec(model.stage_names, 1, patterns=(r"^layer2/block0/bn1/", r"^layer3/block0/bn1/scale$"))
    keep = spec.frozen_stats(params, stats)
    assert {p for p in keep if p.startswith("stem/")} == {p for p in leaf_paths(stats) if p.startswith("stem/")}
    assert {"layer2/block0/bn1/mean", "layer2/block0/bn1/var"} <= keep
    # Only the scale of layer3/block0/bn1 is frozen: its bias trains, so its statistics move.
    assert not any(p.startswith("layer3/") for p in keep)
    assert len(keep) == 2 + sum(p.startswith("stem/") for p in leaf_paths(stats))


@pytest.mark.parametrize("name,slots", [("adamw", 2), ("sgd", 1)])
def test_optimizer_state_holds_only_trainable_leaves(resnet18_shapes, name, slots):
    model, variables = resnet18_shapes
    params = variables["params"]
    sizes = {}
    for depth in range(6):
        spec = FreezeSpec(model.stage_names, depth)
        tx = make_optimizer(OptimConfig(name=name, weight_decay=1e-4, grad_clip_norm=1.0), spec, params, 100)
        state = jax.eval_shape(tx.init, params)
        scalars = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if x.ndim == 0)
        sizes[depth] = num_bytes(state)
        assert sizes[depth] - scalars == slots * _bytes_where(params, spec, frozen=False)
    print(f"\n{name} optimizer state bytes by frozen depth (resnet18, 10 classes):", sizes)
    assert all(sizes[d] > sizes[d + 1] for d in range(5))


def _toy():
    params = {"stem": {"conv": {"kernel": jnp.full((3, 3), 1.0)}},
              "body": {"conv": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 3.0)}},
              "head": {"kernel": jnp.full((2, 4), -1.0), "bias": jnp.zeros((4,))}}
    grads = {"stem": {"conv": {"kernel": jnp.full((3, 3), 1e6)}},     # huge: must not affect clipping
             "body": {"conv": {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.full((2,), 0.25)}},
             "head": {"kernel": jnp.full((2, 4), 1.0), "bias": jnp.full((4,), 2.0)}}
    return ("stem", "body", "head"), params, grads


def test_clip_and_weight_decay_see_only_trainable_leaves():
    stages, params, grads = _toy()
    spec = FreezeSpec(stages, 1)
    cfg = OptimConfig(name="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.01, grad_clip_norm=1.0,
                      schedule="constant")
    tx = make_optimizer(cfg, spec, params, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["stem"]["conv"]["kernel"], 0.0)
    # Reference: the same chain on the trainable subtree alone, written with plain optax.
    sub = lambda t: {k: t[k] for k in ("body", "head")}  # noqa: E731
    ref_tx = optax.chain(optax.clip_by_global_norm(1.0),
                         optax.add_decayed_weights(0.01, lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
                         optax.scale(-0.1))
    ref, _ = ref_tx.update(sub(grads), ref_tx.init(sub(params)), sub(params))
    for got, want in zip(jax.tree.leaves(sub(updates)), jax.tree.leaves(ref)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_lr_mults_scale_updates_first_match_wins():
    stages, params, grads = _toy()
    spec = FreezeSpec(stages, 0, lr_mults=((r"^stem/", 0.0), (r"^body/conv/kernel", 0.1), (r"^body/", 0.5)))
    tx = make_optimizer(OptimConfig(name="sgd", learning_rate=0.1, momentum=0.0, schedule="constant"),
                        spec, params, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    mult = {"stem/conv/kernel": 0.0, "body/conv/kernel": 0.1, "body/conv/bias": 0.5, "head/kernel": 1.0,
            "head/bias": 1.0}
    flat_g = {path_str(p): g for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
        np.testing.assert_allclose(u, -0.1 * mult[path_str(p)] * flat_g[path_str(p)], rtol=1e-6)


def test_gradual_unfreezing_is_a_schedule():
    names = ("a", "b", "c", "d", "head")
    spec = FreezeSpec(names, 4, unfreeze_every=10, unfreeze_until=1)
    assert [spec.at_step(s).prefix_depth for s in (0, 9, 10, 19, 20, 30, 1000)] == [4, 4, 3, 3, 2, 1, 1]
    assert spec.at_step(25).frozen_stages == ("a", "b") and not spec.at_step(25).changes
    written = FreezeSpec(names, schedule=((0, 4), (10, 3), (20, 2), (30, 1)))
    assert written.phases == spec.phases
    with pytest.raises(ValueError):
        FreezeSpec(("a", "head"), 1, unfreeze_every=5, unfreeze_until=2)


def test_trainable_stages_freeze_every_other_stage_the_head_included(resnet18_shapes):
    model, variables = resnet18_shapes
    spec = FreezeSpec(model.stage_names, trainable_stages=("layer2",))
    assert spec.frozen_stages == ("stem", "layer1", "layer3", "layer4", "head") and spec.prefix_depth == 2
    trainable = {p.split("/")[0] for p, lab in _flat_labels(spec, variables["params"]).items() if lab == TRAINABLE}
    assert trainable == {"layer2"}
    keep = spec.frozen_stats(variables["params"], variables["batch_stats"])
    assert {p.split("/")[0] for p in keep} == {"stem", "layer1", "layer3", "layer4"}
    both = FreezeSpec(model.stage_names, trainable_stages=("layer1", "head"))
    assert both.frozen_stages == ("stem", "layer2", "layer3", "layer4") and both.prefix_depth == 1
    # frozen_depth=k is the shorthand for "stages k.. train": one mechanism.
    assert FreezeSpec(model.stage_names, 3).phases == \
        FreezeSpec(model.stage_names, trainable_stages=model.stage_names[3:]).phases


def test_lp_ft_and_phase_learning_rates():
    names = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
    spec = FreezeSpec.from_config({"lp_ft_steps": 30, "schedule_learning_rates": (0.01, 0.001)}, names)
    assert [(p.start, p.frozen, p.learning_rate) for p in spec.phases] == [(0, names[:-1], 0.01), (30, (), 0.001)]
    assert spec.head_only is False and spec.at_step(29).head_only and spec.at_step(30).frozen_stages == ()
    assert FreezeSpec(names, -1).head_only


@pytest.mark.parametrize("kwargs,message", [
    ({"trainable_stages": ("layer9",)}, "no stage 'layer9'; the stages are stem, layer1, layer2, layer3, layer4, head"),
    ({"schedule": ((0, -1), (20, 0), (20, 2))}, "increasing steps"),
    ({"schedule": ((5, -1),)}, "start at step 0"),
    ({"schedule": ((0, 2), (10, ()))}, "nothing trains from step 10"),
    ({"frozen_depth": 2, "trainable_stages": ("head",)}, "not frozen_depth and trainable_stages"),
    ({"schedule": ((0, -1), (10, 0)), "schedule_learning_rates": (0.1,)}, "1 values for 2 phases"),
])
def test_refusals_name_the_problem(kwargs, message):
    names = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
    with pytest.raises(ValueError, match=re.escape(message)):
        FreezeSpec(names, **kwargs)


def test_nothing_trains_when_patterns_freeze_the_rest(resnet18_shapes):
    model, variables = resnet18_shapes
    spec = FreezeSpec(model.stage_names, trainable_stages=("head",), patterns=("^head/",))
    with pytest.raises(ValueError, match="nothing trains from step 0"):
        spec.labels(variables["params"])


def test_transfer_opt_state_keeps_moments_of_leaves_that_stay_trainable():
    stages, params, grads = _toy()
    cfg = OptimConfig(name="adamw", learning_rate=0.1, schedule="constant")
    before = FreezeSpec(stages, 2)
    tx = make_optimizer(cfg, before, params, 10)
    _, state = tx.update(grads, tx.init(params), params)
    after = FreezeSpec(stages, 1)
    tx2 = make_optimizer(cfg, after, params, 10)
    moved = transfer_opt_state(state, tx2.init(params))
    adam_old, adam_new = state.inner_states["trainable"].inner_state[0], \
        moved.inner_states["trainable"].inner_state[0]
    np.testing.assert_array_equal(adam_new.mu["head"]["kernel"], adam_old.mu["head"]["kernel"])
    assert float(jnp.abs(adam_new.mu["head"]["kernel"]).sum()) > 0
    np.testing.assert_array_equal(adam_new.mu["body"]["conv"]["kernel"], 0.0)   # newly trainable: fresh
    assert int(adam_new.count) == int(adam_old.count) == 1
    assert jax.tree.structure(moved) == jax.tree.structure(tx2.init(params))
