"""Frozen BatchNorm folded into the convolution: the same function, the stored variables untouched, fewer passes.

References are the same model with ``fold_frozen_bn=False`` (BatchNorm as its own affine map,
as every port ran before), on random weights with randomised BatchNorm statistics and scales.
"""
from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine_worker import random_variables
from tl_jax.freeze import FreezeSpec
from tl_jax.models import registry
from tl_jax.models.init import variables_template
from tl_jax.optim import OptimConfig, make_optimizer
from tl_jax.step import TrainState, train_step
from tl_jax.tree import flat


def _distinct_models() -> dict[str, list[tuple[str, str]]]:
    """Every (arch, source) pair, grouped by the Flax module it builds: timm's and Hugging Face's ResNets and
    VGGs are torchvision's modules (same class and fields), so testing one tests all of its pairs."""
    groups: dict[object, list[tuple[str, str]]] = {}
    for arch, source in registry.available():
        groups.setdefault(registry.model_config(arch, source).build(num_classes=5), []).append((arch, source))
    return {"+".join(f"{a}/{s}" for a, s in pairs): pairs for pairs in groups.values()}


MODELS = _distinct_models()


def _size(arch: str) -> int:
    return 75 if arch == "inception_v3" else 32


def _random(model, size: int, seed: int = 0) -> dict:
    """Kernels He-uniform, biases small, BatchNorm scale and variance in [0.5, 1.5], means in [-0.2, 0.2]."""
    return random_variables(model, size, seed=seed)


def _rel(a, b) -> float:
    """Worst element difference relative to the largest reference element (outputs)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _rel_norm(a, b) -> float:
    """Relative distance of two parameter tensors (training: a tensor moves as a whole). In float32: the
    difference of two float32 tensors is exact where they are close, and a 1e-7 error of a ratio compared
    with 1e-5 does not matter (VGG's 100M-element classifier made float64 copies cost seconds)."""
    a, b = np.asarray(a, np.float32).ravel(), np.asarray(b, np.float32).ravel()
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-30))


@pytest.mark.parametrize("name", MODELS)
def test_folded_evaluation_equals_batchnorm_for_every_model(name):
    arch, source = MODELS[name][0]
    model = registry.create(arch, source, num_classes=5)
    assert model.fold_frozen_bn    # on by default
    size = _size(arch)
    variables = _random(model, size)
    x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
    both = lambda v, x: (model.apply(v, x, return_stages=True),  # noqa: E731
                         model.clone(fold_frozen_bn=False).apply(v, x, return_stages=True))
    # ResNet-101/152 repeat one block shape dozens of times: run eagerly, each operation compiles once and
    # the whole takes a third of compiling both forwards; the others compile faster as one program.
    folded, plain = (both if arch in ("resnet101", "resnet152") else jax.jit(both))(variables, x)
    assert list(folded) == [*model.stage_names[:-1], "head"]
    worst = {stage: _rel(folded[stage], plain[stage]) for stage in plain}
    print(f"\n{name}: worst relative difference folded vs unfolded {max(worst.values()):.1e}")
    assert max(worst.values()) <= 1e-5, worst


def _hlo_multiplies(model, variables, x) -> list[str]:
    """Multiplies on activation-shaped arrays (rank 4, the batch leading) in the compiled frozen forward."""
    text = jax.jit(lambda v, x: model.apply(v, x, stop_at="head")).lower(variables, x).compile().as_text()
    pattern = rf"= f32\[{x.shape[0]},\d+,\d+,\d+\]\{{[^}}]*\}} multiply\(.*"
    return re.findall(pattern, text)


@pytest.mark.parametrize("arch,source,batch_norms", [("resnet18", "torchvision", 20), ("vgg11_bn", "torchvision", 8),
                                                     ("inception_v3", "keras", 94)])
def test_the_folded_program_scales_no_activation_per_channel(arch, source, batch_norms):
    """Unfolded: at least one multiply per BatchNorm; folded: none (Inception's average-pool branches divide
    by their window counts, a multiply XLA keeps, and those are all that is left). Batch 2 matches no kernel size."""
    size = _size(arch)
    model = registry.create(arch, source, num_classes=5)
    variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), variables_template(model, size))  # shapes matter
    x = np.ones((2, size, size, 3), np.float32)
    plain = _hlo_multiplies(model.clone(fold_frozen_bn=False), variables, x)
    folded = _hlo_multiplies(model, variables, x)
    print(f"\n{arch}: activation multiplies unfolded {len(plain)}, folded {len(folded)}")
    assert len(plain) - len(folded) >= batch_norms
    assert all("pool_branch/div" in line for line in folded), folded


FAMILIES = [("resnet18", "torchvision", 3), ("vgg11_bn", "torchvision", 4), ("inception_v3", "keras", 10)]


@pytest.mark.slow
@pytest.mark.parametrize("arch,source,depth", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_training_at_a_middle_depth_with_and_without_folding(arch, source, depth):
    """Five SGD steps, the first ``depth`` stages frozen: the same parameters either way (float32), and the
    frozen parameters and BatchNorm statistics stay bit-identical to the loaded ones.

    Folding rounds differently in the last bits, and training amplifies any such difference; how much is a
    property of the network. The random-weight ResNet and VGG keep it far below 1e-5, the bar they must meet;
    the random-weight Inception-V3 does not (a 1e-7 relative perturbation of its images already moves its
    parameters by ~3e-5 after five steps), so there the noise floor is measured, the unfolded run against
    itself on images perturbed by 1e-7, and folding must stay within it. A learning rate and batch at which the toys
    train smoothly: at 1e-2 with 4 images their losses rise and fall chaotically. VGG without fc6/fc7 (as Keras'
    ``include_top=False`` weights load): folding is in the convolution blocks, and the 120M-weight classifier
    made three quarters of this test's time."""
    size = _size(arch)
    vgg_options = {"include_classifier": False} if arch.startswith("vgg") else {}
    base = registry.create(arch, source, num_classes=5, **vgg_options)
    variables = random_variables(base, size, seed=3, calibrate=True)
    spec = FreezeSpec(base.stage_names, depth)
    r = np.random.default_rng(4)
    batches = [{"image": r.standard_normal((16, size, size, 3)).astype(np.float32),
                "label": r.integers(0, 5, 16).astype(np.int32)} for _ in range(5)]
    nudged = [{**b, "image": (b["image"] * (1 + 1e-7 * r.standard_normal(b["image"].shape))).astype(np.float32)}
              for b in batches]
    tx = make_optimizer(OptimConfig(name="sgd", learning_rate=1e-3, momentum=0.9), spec, variables["params"], 5)
    step = jax.jit(functools.partial(train_step, frozen_stats=spec.frozen_stats(variables["params"],
                                                                                variables["batch_stats"])))
    runs = [("folded", True, batches), ("plain", False, batches)]
    if arch == "inception_v3":
        runs.append(("nudged", False, nudged))
    ends = {}
    for name, fold, data in runs:
        model = base.clone(fold_frozen_bn=fold).for_training(spec.frozen_stages, None)
        state = TrainState.create(model.apply, variables, tx, 0)
        for b in data:
            state, metrics = step(state, b)
        assert np.isfinite(float(metrics["loss"]))
        ends[name] = flat(state.variables)
    start = flat(variables)
    for k, v in start.items():
        if k.split("/")[1] in spec.frozen_stages:
            np.testing.assert_array_equal(ends["folded"][k], v, err_msg=k)
    for stage in base.stage_names[depth:]:     # (a conv bias before batch-mode BatchNorm gets no gradient)
        assert any(not np.array_equal(ends["folded"][k], v) for k, v in start.items() if k.split("/")[1] == stage), stage
    params = [k for k in start if k.startswith("params/")]
    worst = max((_rel_norm(ends["folded"][k], ends["plain"][k]), k) for k in params)
    moved = max(_rel_norm(ends["folded"][k], start[k]) for k in params)
    floor = max(_rel_norm(ends["nudged"][k], ends["plain"][k]) for k in params) if "nudged" in ends else 0.0
    print(f"\n{arch} depth {depth}: after 5 steps, parameters folded vs unfolded {worst[0]:.1e} ({worst[1]}); "
          f"noise floor {floor:.1e}; moved by training up to {moved:.1e}")
    assert worst[0] <= max(1e-5, 3 * floor), (worst, floor)


def test_bfloat16_folded_against_unfolded_and_float32():
    """bf16 computes the folded kernel and bias in float32, then casts them: one more rounding (of the
    bias, per channel) than the unfolded bf16 model, which keeps BatchNorm's mean in float32. Measured
    here on random weights (about 5e-2 vs 3e-2 from float32); the README quotes the agreement on trained ones."""
    model = registry.create("resnet18", "torchvision", num_classes=10)
    variables = random_variables(model, 32, seed=5, calibrate=True)
    x = np.random.default_rng(6).standard_normal((64, 32, 32, 3)).astype(np.float32)
    run = jax.jit(lambda v, x: [m.apply(v, x) for m in (model, model.clone(dtype=jnp.bfloat16),
                                                         model.clone(dtype=jnp.bfloat16, fold_frozen_bn=False))])
    f32, folded, plain = (np.asarray(y, np.float64) for y in run(variables, x))
    a, b = _rel_norm(folded, f32), _rel_norm(plain, f32)
    agree = lambda y: float((y.argmax(1) == f32.argmax(1)).mean())  # noqa: E731
    print(f"\nresnet18 bf16 logits vs float32 (relative norm): folded {a:.1e}, unfolded {b:.1e}; top-1 agreement "
          f"with float32 {agree(folded):.3f} folded, {agree(plain):.3f} unfolded")
    assert a < 0.1 and b < 0.1 and agree(folded) >= 0.9 and agree(plain) >= 0.9
