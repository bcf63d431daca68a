"""torchvision state_dicts (``.pth`` files) -> Flax variables.

torch is imported lazily: only reading a ``.pth`` file needs it (the ``torch`` extra).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from tl_jax.models import registry
from tl_jax.models.init import variables_template
from tl_jax.weights import convert, maps


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a ``torch.save``-d state_dict (or a checkpoint dict holding one) as numpy arrays."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such weights file: {path}")
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("reading torchvision .pth files needs torch: pip install 'tl_jax[torch]'") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise convert.ConversionError(f"{path} is not a readable torch weights file "
                                      f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(hasattr(v, "numpy") for v in obj.values()):
        raise convert.ConversionError(f"{path} does not hold a state_dict of tensors "
                                      f"(found {type(obj).__name__})")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in obj.items()}


def convert_torchvision(arch: str, source: str | os.PathLike | Mapping[str, Any],
                        model: Any = None) -> dict[str, Any]:
    """A torchvision state_dict (or its file) -> ``{"params", "batch_stats"}`` for ``arch``.

    ``model`` defaults to the registry's model with the 1000-class ImageNet head;
    pass one with another ``num_classes`` to convert a fine-tuned torchvision model.
    """
    info = registry.info(arch, "torchvision")
    state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else {
        k: np.asarray(v.detach().float().numpy() if hasattr(v, "detach") else v) for k, v in source.items()}
    if model is None:
        model = info.build(num_classes=int(state[info.head_key].shape[0]) if info.head_key in state else 1000)
    rules = maps.family(info.family).torchvision_rules(info)
    entries, unmatched = convert.apply_rules(state, rules)
    return convert.assemble(variables_template(model, info.input_size), entries, unmatched,
                            what=f"torchvision weights for {arch}")

