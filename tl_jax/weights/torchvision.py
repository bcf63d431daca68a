"""torchvision state_dicts (``.pth`` or ``.safetensors`` files) -> Flax variables.

torch is imported lazily: only reading a pickled ``.pth`` file needs it (the ``torch`` extra).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from tl_jax.models import registry
from tl_jax.models.init import variables_template
from tl_jax.weights import checks, convert, maps, tensors


def convert_state_dict(model_cfg: registry.ModelConfig, state: Mapping[str, np.ndarray], rules: list,
                       model: Any = None, *, source_name: str) -> dict[str, Any]:
    """A PyTorch-keyed state_dict -> ``{"params", "batch_stats"}`` for ``model_cfg``'s model, strictly.

    A state_dict of another architecture of the family (a deep stem, grouped convolutions, ...)
    is refused first with the difference named; then every key must map and every leaf fill.
    """
    problem = maps.family(model_cfg.family).torch_architecture_problem(state)
    if problem is not None:
        raise convert.ConversionError(f"{source_name} weights are not {model_cfg.arch}: they have {problem}")
    if model is None:
        model = model_cfg.build(num_classes=int(state[model_cfg.head_key].shape[0]) if model_cfg.head_key in state else 1000)
    entries, unmatched = convert.apply_rules(state, rules)
    return convert.assemble(variables_template(model, model_cfg.input_size), entries, unmatched,
                            what=f"{source_name} weights for {model_cfg.arch}")


def as_numpy(source: str | os.PathLike | Mapping[str, Any], *, allow_nonfinite: bool = False
             ) -> dict[str, np.ndarray]:
    """A state_dict file, or a mapping of tensors / arrays, as numpy arrays; NaN or infinity refused
    unless ``allow_nonfinite``."""
    if isinstance(source, (str, os.PathLike)):
        return tensors.read_tensors(source, allow_nonfinite=allow_nonfinite)
    arrays = {k: np.asarray(v.detach().float().numpy() if hasattr(v, "detach") else v) for k, v in source.items()}
    if not allow_nonfinite:
        checks.check_finite(arrays, "the state_dict")
    return arrays


def convert_torchvision(arch: str, source: str | os.PathLike | Mapping[str, Any],
                        model: Any = None, *, allow_nonfinite: bool = False) -> dict[str, Any]:
    """A torchvision state_dict (or its file) -> ``{"params", "batch_stats"}`` for ``arch``.

    ``model`` defaults to the registry's model with the state_dict's head; pass one to
    convert into another configuration. Every torchvision weights tag (``IMAGENET1K_V1``,
    ``IMAGENET1K_V2``) has the same keys.
    """
    model_cfg = registry.model_config(arch, "torchvision")
    return convert_state_dict(model_cfg, as_numpy(source, allow_nonfinite=allow_nonfinite),
                              maps.family(model_cfg.family).torchvision_rules(model_cfg), model, source_name="torchvision")
