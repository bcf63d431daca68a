"""Published ImageNet weights -> a converted-weights store, in one call.

The whole of ``scripts/convert_weights.py`` lives here so that the script stays a thin flag
parser and programs and tests can convert without a subprocess: look up the pair in the
registry, fetch the published file unless one is given, convert it with the source's reader,
save it atomically with its metadata. torch and h5py are imported only by the readers.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tl_jax.models import registry
from tl_jax.weights import fetch, store
from tl_jax.weights.keras import convert_keras
from tl_jax.weights.torchvision import convert_torchvision

_CONVERTERS = {"torchvision": convert_torchvision, "keras": convert_keras}


def convert_weights(arch: str, source: str, output: str | os.PathLike, input_file: str | os.PathLike | None = None,
                    *, overwrite: bool = False) -> dict[str, Any]:
    """Convert ``(arch, source)`` weights into a store at ``output``; returns a summary.

    Without ``input_file`` the published file is downloaded into the cache
    (``tl_jax.weights.fetch``). A headless Keras ``_notop`` file gives a store with
    ``num_classes: null``. The summary has ``arch, source, num_classes, params,
    seconds, output``. Raises ValueError for an unknown pair or a file that does not
    match the model (``ConversionError``), FileNotFoundError, FileExistsError for an
    existing ``output`` without ``overwrite``, ``FetchError`` (a RuntimeError) for a
    failed download; on any error no output or temporary directory is left behind.
    """
    info = registry.info(arch, source)  # unknown arch: lists the available ones
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it")
    start = time.perf_counter()
    path = Path(input_file) if input_file is not None else fetch.fetch(info.arch, info.source)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    variables = _CONVERTERS[info.source](info.arch, path)
    head = variables["params"].get("head")
    num_classes = None if head is None else int(head["bias"].shape[0])  # None: a headless (_notop) file
    metadata = store.build_metadata(info.arch, info.source, num_classes, source_file=path)
    store.save_pretrained(output, variables, metadata, overwrite=overwrite)
    return {"arch": info.arch, "source": info.source, "num_classes": num_classes,
            "params": sum(int(np.size(a)) for a in jax.tree.leaves(variables["params"])),
            "seconds": time.perf_counter() - start, "output": str(output)}
