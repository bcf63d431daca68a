"""``return_stages``, ``stop_at`` / ``input_stage`` and ``for_training`` on small ResNet, VGG and Inception-V3 models
(fast: small inputs)."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.models import layers
from tl_jax.models.inception import inception_v3
from tl_jax.models.resnet import resnet
from tl_jax.models.vgg import vgg

N, CLASSES = 2, 10
# (constructor, input size, expected (H, W, C) of each backbone stage, worked out by hand from the
# architectures). Keras VGG at 32 px keeps fc6 small (512 x 4096); BatchNorm gives it batch_stats.
FAMILIES = {
    "resnet18": (functools.partial(resnet, 18), 64,
                 [(16, 16, 64), (16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)]),
    "vgg11": (functools.partial(vgg, 11, batch_norm=True, variant="keras", dropout_rate=0.5), 32,
              [(16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512), (1, 1, 512), (4096,)]),
    "inception_v3": (inception_v3, 75,
                     [(7, 7, 192), (7, 7, 256), (7, 7, 288), (7, 7, 288), (3, 3, 768), (3, 3, 768), (3, 3, 768),
                      (3, 3, 768), (3, 3, 768), (1, 1, 1280), (1, 1, 2048), (1, 1, 2048)]),
}


@functools.lru_cache(maxsize=None)
def _setup(family: str):
    ctor, size, shapes = FAMILIES[family]
    model = ctor(num_classes=CLASSES)
    x = jnp.asarray(np.random.RandomState(0).randn(N, size, size, 3).astype(np.float32))
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), x), x, shapes


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_inception_stages_in_forward_order_with_shapes():
    """Shapes only (compiling Inception's forward costs tens of seconds here); its values are checked
    through the same mechanism on the two families below."""
    ctor, size, shapes = FAMILIES["inception_v3"]
    model = ctor(num_classes=CLASSES)
    x = jax.ShapeDtypeStruct((N, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    stages = jax.eval_shape(functools.partial(model.apply, return_stages=True), variables, x)
    assert list(stages) == [*model.stage_names[:-1], "head"]
    assert [v.shape for v in stages.values()] == [(N, *s) for s in shapes] + [(N, CLASSES)]


@pytest.mark.parametrize("family", ["resnet18", "vgg11"])
def test_stages_in_forward_order_with_shapes_and_values(family):
    model, variables, x, shapes = _setup(family)

    @jax.jit
    def run(v, x):
        # Every stage module's own output, recorded by Flax: the dict must hold exactly these.
        logits, state = model.apply(v, x, capture_intermediates=lambda m, _: m.name in model.stage_names,
                                    mutable=["intermediates"])
        return (model.apply(v, x, return_stages=True), logits, state["intermediates"],
                model.apply(v, x, return_features=True))

    stages, logits, recorded, features = run(variables, x)
    assert list(stages) == [*model.stage_names[:-1], "head"]
    assert [v.shape for v in stages.values()] == [(N, *s) for s in shapes] + [(N, CLASSES)]
    for name in model.stage_names:
        _close(stages[name], recorded[name]["__call__"][0])
    _close(stages["head"], logits)
    last = stages[model.stage_names[-2]]
    _close(features, last if last.ndim == 2 else layers.global_avg_pool(last))


def test_no_head_and_features_only():
    model, variables, x, _ = _setup("resnet18")
    headless = model.clone(num_classes=None)
    backbone = {"params": {k: v for k, v in variables["params"].items() if k != "head"},
                "batch_stats": variables["batch_stats"]}
    stages = jax.jit(functools.partial(headless.apply, return_stages=True))(backbone, x)
    assert list(stages) == list(model.stage_names[:-1])
    both = jax.eval_shape(functools.partial(model.apply, return_stages=True, return_features=True), variables, x)
    assert list(both) == list(stages)


@pytest.mark.parametrize("family", ["resnet18", "vgg11"])
def test_stages_jitted_frozen_and_training(family):
    model, variables, x, _ = _setup(family)
    model = model.clone(frozen_stages=model.stage_names[:3])
    rngs = {"dropout": jax.random.PRNGKey(1)}

    @functools.partial(jax.jit, static_argnames="return_stages")
    def run(v, x, return_stages):
        return model.apply(v, x, train=True, return_stages=return_stages, mutable=["batch_stats"], rngs=rngs)

    stages, new_stats = run(variables, x, return_stages=True)
    logits, ref_stats = run(variables, x, return_stages=False)
    assert list(stages) == [*model.stage_names[:-1], "head"]
    _close(stages["head"], logits)
    eval_logits = jax.jit(model.apply)(variables, x)
    # Dropout before the head (VGG, Inception) makes the training logits differ from evaluation.
    assert family == "resnet18" or not np.allclose(logits, eval_logits, atol=1e-3)
    for stage in variables["batch_stats"]:
        old, new, ref = (jax.tree.leaves(t[stage]) for t in (variables["batch_stats"], new_stats["batch_stats"],
                                                             ref_stats["batch_stats"]))
        for a, b in zip(new, ref):
            _close(a, b)
        moved = any(not np.array_equal(a, b) for a, b in zip(old, new))
        assert moved == (model.stage_names.index(stage) >= 3), stage


def _grad_norms(model, variables, x):
    def loss(params):
        stages, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                                return_stages=True)
        return sum(jnp.sum(v) for v in stages.values())

    grads = jax.jit(jax.grad(loss))(variables["params"])
    return {stage: sum(float(jnp.abs(leaf).sum()) for leaf in jax.tree.leaves(g)) for stage, g in grads.items()}


def test_frozen_stages_get_no_gradient():
    model, variables, x, _ = _setup("resnet18")
    norms = _grad_norms(model.clone(frozen_stages=model.stage_names[:3]), variables, x)
    for stage, norm in norms.items():
        assert (norm == 0) == (model.stage_names.index(stage) < 3), stage


def test_gradient_stops_below_the_lowest_trainable_stage_and_flows_through_frozen_stages_above():
    """Surgical: only layer2 trains. Below it nothing is differentiated; above it the frozen stages pass the
    gradient down (their own weight gradients exist; the optimizer's ``set_to_zero`` drops them)."""
    model, variables, x, _ = _setup("resnet18")
    surgical = model.for_training([s for s in model.stage_names if s != "layer2"], None)
    norms = _grad_norms(surgical, variables, x)
    assert norms["stem"] == norms["layer1"] == 0
    assert all(norms[s] > 0 for s in ("layer2", "layer3", "layer4", "head"))
    # layer2's gradient is the one the unfrozen model gives it: the frozen stages above are only a
    # different BatchNorm mode (running averages), so compare with the model whose stages above are
    # evaluated the same way.
    assert norms["layer2"] != _grad_norms(model, variables, x)["layer2"]


@pytest.mark.parametrize("family", ["resnet18", "vgg11"])
def test_stop_at_and_input_stage_split_the_model_exactly(family):
    model, variables, x, _ = _setup(family)
    full = jax.jit(model.apply)(variables, x)
    for k in (1, 3, len(model.stage_names) - 1):
        stage = model.stage_names[k]
        middle = jax.jit(lambda v, x: model.apply(v, x, stop_at=stage))(variables, x)
        rest = {c: {s: t for s, t in tree.items() if s in model.stage_names[k:]} for c, tree in variables.items()}
        logits = jax.jit(model.clone(input_stage=stage).apply)(rest, middle)
        np.testing.assert_array_equal(np.asarray(logits), np.asarray(full), err_msg=stage)
    features = model.apply(variables, x, return_features=True)
    _close(model.apply(variables, x, stop_at="head"), features)
    with pytest.raises(ValueError, match="not a stage"):
        model.apply(variables, x, stop_at="layer9")


@pytest.mark.parametrize("family", FAMILIES)
def test_for_training_sets_only_the_frozen_stages_and_axis(family):
    model = FAMILIES[family][0](num_classes=CLASSES)
    frozen = (model.stage_names[3], model.stage_names[0])
    trained = model.for_training(frozen, "data")
    assert type(trained) is type(model) and model.frozen_stages == () and model.bn_axis_name is None
    fields = [f.name for f in dataclasses.fields(model) if f.name not in ("parent", "name")]
    changed = {f for f in fields if getattr(trained, f) != getattr(model, f)}
    assert changed == {"frozen_stages", "bn_axis_name"}
    assert (trained.frozen_stages, trained.bn_axis_name) == ((model.stage_names[0], model.stage_names[3]), "data")
    assert trained.for_training((), None) == model
    with pytest.raises(ValueError, match="no stage 'nope'"):
        model.for_training(("nope",), None)


def test_for_training_averages_batch_stats_over_the_axis():
    model, variables, x, _ = _setup("resnet18")
    x4 = jnp.concatenate([x, x[:, ::-1]])
    shards = x4.reshape(2, N, *x.shape[1:])
    stats = lambda m, xs: m.apply(variables, xs, train=True, mutable=["batch_stats"])[1]  # noqa: E731
    whole = jax.jit(functools.partial(stats, model))(x4)
    per_shard = jax.jit(jax.vmap(functools.partial(stats, model.for_training((), "data")), axis_name="data"))(shards)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(per_shard)):
        _close(b[0], a)
        _close(b[1], a)
    # Without the axis each shard keeps its own statistics.
    alone = jax.jit(jax.vmap(functools.partial(stats, model)))(shards)
    assert not np.allclose(jax.tree.leaves(alone)[0][0], jax.tree.leaves(alone)[0][1])
