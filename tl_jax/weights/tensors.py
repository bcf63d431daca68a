"""PyTorch-style tensor files -> ``{key: numpy array}``: ``.safetensors``, ``.pth`` / ``.pt`` / ``.bin``.

Safetensors files are read with the ``safetensors`` package's numpy API (no torch needed);
pickled files with ``torch.load(weights_only=True)``, which refuses pickled code. Either way a
file that cannot be read gives one :class:`ConversionError` naming it.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from tl_jax.weights.convert import ConversionError

SAFETENSORS = (".safetensors",)
PICKLED = (".pth", ".pt", ".bin", ".ckpt")


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a state_dict file, floating point as float32, in file order."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such weights file: {path}")
    if path.endswith(SAFETENSORS):
        return _read_safetensors(path)
    return _read_pickled(path)


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("reading .safetensors files needs safetensors: pip install 'tl_jax[hub]'") from e
    try:
        arrays = load_file(path)
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise ConversionError(f"{path} is not a readable safetensors file "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    return {k: a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a for k, a in arrays.items()}


def _read_pickled(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"reading {os.path.basename(path)} needs torch: pip install 'tl_jax[torch]' "
                          "(or convert a .safetensors file)") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise ConversionError(f"{path} is not a readable torch weights file "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    for key in ("state_dict", "model", "state_dict_ema"):  # training checkpoints nest the weights
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(hasattr(v, "numpy") for v in obj.values()):
        raise ConversionError(f"{path} does not hold a state_dict of tensors (found {type(obj).__name__})")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in obj.items()}
