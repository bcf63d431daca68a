"""PyTorch-style tensor files -> ``{key: numpy array}``: ``.safetensors``, ``.pth`` / ``.pt`` / ``.bin``.

Safetensors files are read with the ``safetensors`` package's numpy API (no torch needed);
pickled files with ``torch.load(weights_only=True)``, which refuses pickled code. A zip-format
torch file (torch >= 1.6) has every entry's CRC-32 verified first, as ``torch.load`` does not; a
legacy non-zip pickle has no checksum and is read as torch reads it (still ``weights_only``).
Either way a file that cannot be read, or that holds NaN or infinity (unless ``allow_nonfinite``),
gives one :class:`ConversionError` naming it and, where it applies, the key.
"""
from __future__ import annotations

import os
import zipfile
from typing import Mapping

import numpy as np

from tl_jax.weights import checks
from tl_jax.weights.convert import ConversionError

SAFETENSORS = (".safetensors",)
PICKLED = (".pth", ".pt", ".bin", ".ckpt")


def read_tensors(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """Every tensor of a state_dict file, floating point as float32, in file order."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such weights file: {path}")
    arrays = _read_safetensors(path) if path.endswith(SAFETENSORS) else _read_pickled(path)
    if not allow_nonfinite:
        checks.check_finite(arrays, path)
    return arrays


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("reading .safetensors files needs safetensors: pip install 'tl_jax[hub]'") from e
    try:
        arrays = load_file(path)
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise ConversionError(f"{path} is not a readable safetensors file ({checks.describe(e)})") from e
    # bfloat16 and float8 arrive as ml_dtypes types, which numpy does not count as floating; float32 arrays are
    # kept as read (writable, and a copy of VGG's 400 MB classifier costs 0.4 s)
    return {k: a.astype(np.float32, copy=False) if a.dtype.kind == "f" or "float" in a.dtype.name else a
            for k, a in arrays.items()}


def _read_pickled(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"reading {os.path.basename(path)} needs torch: pip install 'tl_jax[torch]' "
                          "(or convert a .safetensors file)") from e
    if zipfile.is_zipfile(path):
        checks.verify_zip(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        refused = next((line.strip() for line in str(e).splitlines() if "WeightsUnpickler error:" in line), None)
        if refused:  # pickled code or objects: never executed, never loaded
            raise ConversionError(f"{path} is not a readable torch weights file: it pickles more than tensors, which "
                                  f"weights_only loading refuses ({refused.split('. Please')[0]})") from e
        raise ConversionError(f"{path} is not a readable torch weights file ({checks.describe(e)})") from e
    for key in ("state_dict", "model", "state_dict_ema"):  # training checkpoints nest the weights
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path} does not hold a state_dict of tensors (found {type(obj).__name__})")
    checks.check_keys(obj, path)
    out = {}
    for k, v in obj.items():
        try:
            out[k] = v.detach().float().numpy() if v.is_floating_point() else v.numpy()
        except Exception as e:  # quantized, sparse or meta tensors have no plain numpy view
            raise ConversionError(f"{path}: tensor {k!r} ({v.dtype}, {v.layout}) cannot be read as an array "
                                  f"({checks.describe(e)})") from e
    return out
