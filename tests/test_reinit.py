"""reinit_stages: earlier stages untouched, later ones drawn with the source framework's initialisers.

The expected distributions are written here from the formulas (``_expected``), independently of the
module's table, and tied to the frameworks by comparing with freshly built torchvision and Keras
layers.
"""
from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest

from tl_jax.models import registry
from tl_jax.models.init import variables_template
from tl_jax.models.reinit import reinit_stages
from tl_jax.tree import path_str

BIG = 2000  # kernels with at least this many values get the statistical checks


@functools.lru_cache(maxsize=None)
def _model_vars(arch: str, source: str, size: int, include_classifier: bool = True):
    """(stage names, a template's shapes filled with random values that are no initialiser's)."""
    kwargs = {} if include_classifier else {"include_classifier": False}
    model = registry.create(arch, source, num_classes=10, **kwargs)
    rng = np.random.default_rng(1234)
    fill = lambda s: (rng.standard_normal(s.shape, np.float32) * 0.3 + 0.5).astype(s.dtype)  # noqa: E731
    return tuple(model.stage_names), jax.tree.map(fill, variables_template(model, size))


def _leaves(tree) -> dict[tuple[str, ...], object]:
    return {tuple(path_str(p).split("/")): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _get(tree, keys):
    for k in keys:
        tree = tree.get(k, {})
    return tree


def _expected(source: str, family: str, keys: tuple[str, ...], params, zero_bn: str = ""):
    """("const", v) | ("normal", std) | ("uniform", bound) of a fresh leaf, from the published rules."""
    _, *layer, name = keys
    if name in ("mean", "var"):
        return "const", float(name == "var")
    kernel = _get(params, layer).get("kernel")
    if kernel is None:  # BatchNorm
        if name == "bias":
            return "const", 0.0
        return "const", 0.0 if layer[-1] == zero_bn and layer[1].startswith("block") else 1.0
    shape = kernel.shape
    receptive = math.prod(shape[:-2])
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    if source == "keras":  # glorot_uniform kernels, zero biases
        return ("uniform", math.sqrt(6 / (fan_in + fan_out))) if name == "kernel" else ("const", 0.0)
    if source == "timm" and family == "vgg" and layer[-1] in ("fc6", "fc7"):  # 7x7 / 1x1 convolutions
        fan_out *= 49 if layer[-1] == "fc6" else 1
        shape = (1, 1, *shape)
    if family == "resnet":  # kaiming_normal_(fan_out, relu) convs; nn.Linear's default fc
        return ("normal", math.sqrt(2 / fan_out)) if len(shape) == 4 else ("uniform", 1 / math.sqrt(fan_in))
    if family == "vgg":  # kaiming convs, normal(0, 0.01) Linear, zero biases
        if name == "bias":
            return "const", 0.0
        return ("normal", math.sqrt(2 / fan_out)) if len(shape) == 4 else ("normal", 0.01)
    # inception: trunc_normal_(std=0.1, a=-2, b=2) weights; the fc bias keeps nn.Linear's default
    return ("normal", 0.1) if name == "kernel" else ("uniform", 1 / math.sqrt(fan_in))


def _check_draw(x, kind: str, p: float, what: str) -> None:
    x = np.asarray(x, np.float64).ravel()
    n = x.size
    if kind == "const":
        assert np.all(x == p), f"{what}: expected all {p}"
        return
    if kind == "uniform":
        assert np.abs(x).max() <= p * (1 + 1e-6), f"{what}: beyond the bound {p}"
    if n < BIG:
        assert np.unique(x).size > n // 2, f"{what}: not random"
        return
    sigma = p if kind == "normal" else p / math.sqrt(3)
    assert abs(x.mean()) < 4 * sigma / math.sqrt(n), f"{what}: mean {x.mean()} (sigma {sigma})"
    assert abs(x.std() / sigma - 1) < 4 * math.sqrt(1 / (2 * n)) + 0.005, f"{what}: std {x.std()} != {sigma}"
    if kind == "uniform":
        assert np.abs(x).max() > p * (1 - 10 / n), f"{what}: does not fill [-{p}, {p}]"
    else:  # a normal reaches beyond 2 sigma; a uniform of that std stops at 1.73 sigma
        assert np.abs(x).max() > 2 * sigma, f"{what}: no tail beyond 2 sigma"


CASES = [  # arch, source, family, size, include_classifier, first, last BatchNorm zeroed (timm)
    ("resnet18", "torchvision", "resnet", 32, True, "layer3", ""),
    ("vgg11_bn", "torchvision", "vgg", 32, False, "block4", ""),
    ("inception_v3", "torchvision", "inception", 75, True, "mixed6b", ""),
    ("inception_v3", "keras", "inception", 75, True, "mixed6b", ""),
    ("resnet50", "keras", "resnet", 32, True, "layer3", ""),
    ("resnet18", "timm", "resnet", 32, True, "layer3", "bn2"),
]


@pytest.mark.parametrize("arch,source,family,size,include_classifier,first,zero_bn", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_reinit_from_stage(arch, source, family, size, include_classifier, first, zero_bn):
    names, variables = _model_vars(arch, source, size, include_classifier)
    run = functools.partial(reinit_stages, variables, family=family, source=source, stage_names=names, first=first)
    out, again, other = run(seed=0), run(seed=0), run(seed=1)
    assert jax.tree.structure(out) == jax.tree.structure(variables)
    fresh = set(names[names.index(first):])
    before, after, after2, after_other = map(_leaves, (variables, out, again, other))
    n_fresh = 0
    for keys, x in before.items():
        y, what = after[keys], "/".join(keys)
        if keys[1] not in fresh:
            assert y is x and np.array_equal(y, x), f"{what}: earlier stage changed"
            continue
        n_fresh += 1
        assert y.shape == x.shape and y.dtype == x.dtype, what
        assert not np.array_equal(y, x), f"{what}: not re-initialised"
        assert np.array_equal(after2[keys], y), f"{what}: same seed, different values"
        kind, p = _expected(source, family, keys, variables["params"], zero_bn)
        _check_draw(y, kind, p, what)
        if kind != "const":
            assert not np.array_equal(after_other[keys], y), f"{what}: another seed, same values"
    assert n_fresh > 10 and "head" in fresh


def test_keras_inception_batchnorm_has_no_scale_and_stays_so():
    names, variables = _model_vars("inception_v3", "keras", 75)
    out = reinit_stages(variables, family="inception", source="keras", stage_names=names, first="mixed7c", seed=3)
    bn = out["params"]["mixed7c"]["branch1x1"]["bn"]
    assert set(bn) == {"bias"} and np.all(bn["bias"] == 0)
    assert set(out["batch_stats"]["mixed7c"]["branch1x1"]["bn"]) == {"mean", "var"}


def _small_vgg(classifier: bool = True):
    """A hand-made VGG tree with a small classifier (fc6 in = 8 channels x 7 x 7)."""
    rng = np.random.default_rng(7)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    params = {"block1": {"conv1": {"kernel": r(3, 3, 3, 16), "bias": r(16)}},
              "block2": {"conv1": {"kernel": r(3, 3, 16, 32), "bias": r(32)}},
              "classifier": {"fc6": {"kernel": r(8 * 49, 256), "bias": r(256)},
                             "fc7": {"kernel": r(256, 256), "bias": r(256)}},
              "head": {"kernel": r(256, 10), "bias": r(10)}}
    return ("block1", "block2", "classifier", "head"), {"params": params}


@pytest.mark.parametrize("source", ["torchvision", "timm", "keras"])
def test_vgg_classifier_rules(source):
    """torchvision: Linear normal(0, 0.01); timm: fc6/fc7 are 7x7/1x1 convs (Kaiming, fan_out 49*out);
    Keras: glorot_uniform."""
    names, variables = _small_vgg()
    out = reinit_stages(variables, family="vgg", source=source, stage_names=names, first="block2", seed=5)
    for keys, y in _leaves(out).items():
        if keys[1] != "block1":
            _check_draw(y, *_expected(source, "vgg", keys, variables["params"]), "/".join(keys))
    assert out["params"]["block1"]["conv1"]["kernel"] is variables["params"]["block1"]["conv1"]["kernel"]


def test_hf_draws_what_torchvision_draws():
    names, variables = _model_vars("resnet18", "torchvision", 32)
    tv, hf = (reinit_stages(variables, family="resnet", source=s, stage_names=names, first=-2, seed=9)
              for s in ("torchvision", "hf"))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(tv), jax.tree.leaves(hf)))


def test_independent_of_dict_order_and_index_spellings():
    names, variables = _model_vars("resnet18", "torchvision", 32)

    def reverse(tree):
        return {k: reverse(tree[k]) for k in reversed(list(tree))} if isinstance(tree, dict) else tree
    run = functools.partial(reinit_stages, family="resnet", source="torchvision", stage_names=names, seed=4)
    base = _leaves(run(variables, first="layer4"))
    for alt in (run(reverse(variables), first="layer4"), run(variables, first=4), run(variables, first=-2)):
        alt = _leaves(alt)
        assert alt.keys() == base.keys() and all(np.array_equal(alt[k], base[k]) for k in base)
    # -1: the head alone; 0 and -len: everything
    head_only = _leaves(run(variables, first=-1))
    assert [k for k, x in head_only.items() if x is not _leaves(variables)[k]] == [
        ("params", "head", "bias"), ("params", "head", "kernel")]
    for first in (0, -len(names)):
        assert not any(x is variables_leaf for x, variables_leaf
                       in zip(jax.tree.leaves(run(variables, first=first)), jax.tree.leaves(variables)))


def test_low_precision_dtypes_kept():
    names, variables = _model_vars("resnet18", "torchvision", 32)
    for dtype in (np.float16, jax.numpy.bfloat16):
        cast = jax.tree.map(lambda x: x.astype(dtype), variables)
        out = reinit_stages(cast, family="resnet", source="torchvision", stage_names=names, first="layer4", seed=0)
        assert all(y.dtype == np.dtype(dtype) for y in jax.tree.leaves(out))
        w = np.asarray(out["params"]["layer4"]["block1"]["conv2"]["kernel"], np.float32)
        assert abs(w.std() / math.sqrt(2 / (9 * 512)) - 1) < 0.02


@pytest.mark.parametrize("first", ["layer9", "Layer3", 6, -7, 1.0])
def test_refusals_name_the_stages(first):
    names, variables = _model_vars("resnet18", "torchvision", 32)
    with pytest.raises(ValueError) as err:
        reinit_stages(variables, family="resnet", source="torchvision", stage_names=names, first=first, seed=0)
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in names), msg


def test_refuses_unknown_source_and_stray_stages():
    names, variables = _model_vars("resnet18", "torchvision", 32)
    with pytest.raises(ValueError, match="keras/vgg"):
        reinit_stages(variables, family="resnet", source="caffe", stage_names=names, first=1, seed=0)
    with pytest.raises(ValueError, match="layer4"):  # the tree holds a stage the names leave out
        reinit_stages(variables, family="resnet", source="torchvision", stage_names=names[:4] + names[5:],
                      first=1, seed=0)


# --- the real frameworks: a fresh torchvision / Keras layer has the statistics reinit draws ---------

def _same_law(ours, theirs, what: str) -> None:
    """Equal std within sampling error, and the same shape of law (kurtosis: normal 3, uniform 1.8)."""
    a, b = (np.asarray(v, np.float64).ravel() for v in (ours, theirs))
    tol = 4 * math.sqrt(1 / (2 * a.size) + 1 / (2 * b.size)) + 0.01
    assert abs(a.std() / b.std() - 1) < tol, f"{what}: std {a.std()} vs the framework's {b.std()}"
    kurt = [((v - v.mean()) ** 4).mean() / v.var() ** 2 for v in (a, b)]
    assert abs(kurt[0] - kurt[1]) < 0.5, f"{what}: kurtosis {kurt[0]} vs the framework's {kurt[1]}"


def _torch_pairs(arch, model, torch):
    """(our layer path, torch module) for some big layers of each family, and the head."""
    if arch == "resnet18":
        return [("layer3/block0/conv1", model.layer3[0].conv1), ("layer3/block0/downsample_conv",
                 model.layer3[0].downsample[0]), ("layer4/block1/conv2", model.layer4[1].conv2), ("head", model.fc)]
    if arch == "vgg11_bn":
        convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
        return [("block4/conv1", convs[4]), ("block5/conv2", convs[7]), ("head", model.classifier[6])]
    return [("mixed6b/branch7x7_2/conv", model.Mixed_6b.branch7x7_2.conv),
            ("mixed7c/branch3x3_1/conv", model.Mixed_7c.branch3x3_1.conv), ("head", model.fc)]


@pytest.mark.parametrize("arch,size,first", [("resnet18", 32, "layer3"), ("vgg11_bn", 32, "block4"),
                                             ("inception_v3", 75, "mixed6b")])
def test_matches_torchvision(arch, size, first):
    torch, torchvision = pytest.importorskip("torch"), pytest.importorskip("torchvision")
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "inception_v3" else {}
    model = getattr(torchvision.models, arch)(num_classes=10, **kwargs)
    family = {"resnet18": "resnet", "vgg11_bn": "vgg", "inception_v3": "inception"}[arch]
    names, variables = _model_vars(arch, "torchvision", size, arch != "vgg11_bn")
    out = reinit_stages(variables, family=family, source="torchvision", stage_names=names, first=first, seed=0)
    for path, module in _torch_pairs(arch, model, torch):
        ours = _get(out["params"], path.split("/"))
        _same_law(ours["kernel"], module.weight.detach().numpy(), f"{path} weight")
        if "bias" in ours:  # both zero (VGG) or both nn.Linear's uniform default
            theirs = module.bias.detach().numpy()
            if np.all(theirs == 0):
                assert np.all(ours["bias"] == 0), path
            else:
                bound = 1 / math.sqrt(module.weight.shape[1])
                assert np.abs(theirs).max() <= bound and np.abs(ours["bias"]).max() <= bound, path
    for m in model.modules():  # every torchvision BatchNorm starts at weight 1, bias 0
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_matches_keras():
    keras = pytest.importorskip("keras")
    names, variables = _model_vars("resnet50", "keras", 32)
    out = reinit_stages(variables, family="resnet", source="keras", stage_names=names, first="layer3", seed=0)
    ours = out["params"]["layer3"]["block1"]["conv2"]
    conv = keras.layers.Conv2D(ours["kernel"].shape[-1], ours["kernel"].shape[:2])
    conv.build((None, 8, 8, ours["kernel"].shape[2]))
    _same_law(ours["kernel"], keras.ops.convert_to_numpy(conv.kernel), "layer3/block1/conv2")
    dense = keras.layers.Dense(10)
    dense.build((None, 2048))
    _same_law(out["params"]["head"]["kernel"], keras.ops.convert_to_numpy(dense.kernel), "head")
    assert np.all(keras.ops.convert_to_numpy(dense.bias) == 0) and np.all(out["params"]["head"]["bias"] == 0)
    bn = keras.layers.BatchNormalization()
    bn.build((None, 4, 4, 8))
    assert [float(keras.ops.convert_to_numpy(w)[0]) for w in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)] \
        == [1.0, 0.0, 0.0, 1.0]
