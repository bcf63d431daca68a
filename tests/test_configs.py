"""Configs: every recipe loads and validates, overrides apply, and a misspelt field fails with a hint."""
from __future__ import annotations

import glob
import os

import pytest

from tl_jax.experiment.config import ConfigError, flatten, load_config, to_dict
from tl_jax.experiment.setup import validate
from tl_jax.freeze import FreezeSpec
from tl_jax.models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "default.py")
RECIPES = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not p.endswith("__init__.py"))
# The weights each recipe expects (their directories are made by scripts/convert_weights.py, not here):
# enough to check the recipe's frozen depth against the real stage names.
WEIGHTS_ARCH = {"weights/resnet50_tv": ("resnet50", "torchvision"), "weights/vgg16_keras": ("vgg16", "keras"),
                "weights/inception_v3_keras": ("inception_v3", "keras")}


def _flat_keys(config) -> set[str]:
    return set(flatten(to_dict(config)))


def _arch(config) -> tuple[str, str]:
    if not config.weights:
        return config.model.arch, config.model.source
    assert config.weights in WEIGHTS_ARCH, f"add {config.weights!r} to WEIGHTS_ARCH in this test"
    return WEIGHTS_ARCH[config.weights]


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_every_recipe_loads_validates_and_only_sets_default_fields(path):
    base = _flat_keys(load_config(DEFAULT))
    variants = [path + ":pretrain", path] if path.endswith("quickstart.py") else [path]
    if path.endswith("transfer_study.py"):
        variants = [f"{path}:{stage}" for stage in ("base", "transfer", "pretrain", "surgical")]
    for variant in variants:
        config = load_config(variant)
        assert config.is_locked
        keys = _flat_keys(config)
        if path.endswith("transfer_study.py"):  # a study config: what the study varies sits apart, in `study`
            keys = {k for k in keys if not k.startswith("study.")}
            assert set(config.study.keys()) >= {"split_seed", "copied_stages", "shifts", "variants"}
        assert keys == base, f"{variant} adds or drops fields; put new fields in default.py"
        stages = registry.model_config(*_arch(config)).stage_names
        validate(config, stages)
        spec = FreezeSpec.from_config(config.freeze, stages)
        assert 0 <= spec.frozen_depth < len(stages)


def test_overrides_apply_and_keep_the_config_locked():
    config = load_config(DEFAULT, {"freeze.frozen_depth": -1, "optim.learning_rate": 0.5,
                                              "data.source": "synthetic"})
    assert (config.freeze.frozen_depth, config.optim.learning_rate, config.data.source) == (-1, 0.5, "synthetic")
    assert FreezeSpec.from_config(config.freeze, registry.model_config("resnet50").stage_names).frozen_depth == 5
    with pytest.raises(AttributeError):
        config.optim.new_field = 1


def test_a_misspelt_override_fails_with_a_hint():
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(DEFAULT, {"optim.learning_rat": 0.1})


@pytest.mark.parametrize("bad,match", [({"optim.name": "adam"}, "unknown optimizer"),
                                       ({"data.source": "tfds"}, "data.source"),
                                       ({"parallel": "dp"}, "parallel"),
                                       ({"freeze.frozen_depth": 6}, "out of range")])
def test_invalid_values_fail_before_any_data_is_read(bad, match):
    config = load_config(DEFAULT, bad)
    with pytest.raises(ConfigError, match=match):
        validate(config, registry.model_config("resnet50").stage_names)
