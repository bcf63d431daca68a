"""Published ImageNet weights -> a converted-weights store, in one call.

The whole of ``scripts/convert_weights.py`` lives here so that the script stays a thin flag
parser and programs and tests can convert without a subprocess: look up the pair and its weights
tag in the registry, find the published file (a framework cache, else a download) unless one is
given, convert it with the source's reader, save it atomically with the tag's preprocessing.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tl_jax.models import registry
from tl_jax.weights import checks, fetch, hf, store
from tl_jax.weights.convert import ConversionError
from tl_jax.weights.keras import convert_keras, convert_keras_backbone
from tl_jax.weights.timm import convert_timm
from tl_jax.weights.torchvision import convert_torchvision

_CONVERTERS = {"torchvision": convert_torchvision, "keras": convert_keras, "timm": convert_timm,
               "hf": hf.convert_hf}


def convert_weights(arch: str, source: str, output: str | os.PathLike, input_file: str | os.PathLike | None = None,
                    *, weights: str | None = None, backbone_only: bool = False,
                    overwrite: bool = False, allow_nonfinite: bool = False) -> dict[str, Any]:
    """Convert ``(arch, source)`` weights (tag ``weights``) into a store at ``output``; returns a summary.

    Without ``input_file`` the published file is taken from a framework cache or downloaded
    (``tl_jax.weights.fetch``). For ``hf`` the input is a ``save_pretrained`` directory (or its
    weights file beside ``config.json``). ``backbone_only`` (Keras) converts the
    ``keras.applications`` backbone inside a model with the user's own layers and reports those
    as ``ignored``. A headless file gives a store with ``num_classes: null``. Source weights holding
    NaN or infinity are refused unless ``allow_nonfinite``; a torch zip's CRC-32s are verified. The summary has
    ``arch, source, weights, num_classes, params, ignored, seconds, output``. Raises ValueError for an
    unknown pair or tag or a file that does not match the model (``ConversionError``),
    FileNotFoundError, FileExistsError for an existing ``output`` without ``overwrite``,
    ``FetchError`` (a RuntimeError) for a failed download; a refusal names the file (and the key
    where one is at fault); on any error no output or temporary directory is left behind.
    """
    model_cfg = registry.model_config(arch, source)  # unknown arch: lists the available ones
    published = model_cfg.weights_for(weights)
    if backbone_only and model_cfg.source != "keras":
        raise ValueError(f"--backbone_only reads Keras models with their own layers; {model_cfg.source} weights "
                         "convert with their head, then load_pretrained(dir, num_classes=N) replaces it")
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it")
    start = time.perf_counter()
    path = Path(input_file) if input_file is not None else fetch.fetch(model_cfg.arch, model_cfg.source, weights=published.tag)
    if not path.exists() or (model_cfg.source != "hf" and not path.is_file()):
        raise FileNotFoundError(f"no such weights file: {path}")
    variables, ignored = _convert(model_cfg, path, backbone_only, allow_nonfinite)
    head = variables["params"].get("head")
    num_classes = None if head is None else int(head["bias"].shape[0])  # None: a headless file
    model_kwargs = {"include_classifier": False} if model_cfg.family == "vgg" and "classifier" not in variables["params"] \
        else {}
    source_file = hf.locate(path)[0] if model_cfg.source == "hf" else path
    metadata = store.build_metadata(model_cfg.arch, model_cfg.source, num_classes, source_file=source_file,
                                    weights=published.tag, preprocessing=_hf_preprocessing(path, model_cfg),
                                    model_kwargs=model_kwargs)
    store.save_pretrained(output, variables, metadata, overwrite=overwrite)
    return {"arch": model_cfg.arch, "source": model_cfg.source, "weights": published.tag, "num_classes": num_classes,
            "params": sum(int(np.size(a)) for a in jax.tree.leaves(variables["params"])), "ignored": ignored,
            "seconds": time.perf_counter() - start, "output": str(output)}


def _convert(model_cfg: registry.ModelConfig, path: Path, backbone_only: bool, allow_nonfinite: bool
             ) -> tuple[dict[str, Any], list[str]]:
    """The source's converter, with every refusal naming the file: damage the readers cannot name
    (a header byte that makes a shape or a class count absurd) becomes one ConversionError too."""
    try:
        if backbone_only:
            return convert_keras_backbone(model_cfg.arch, path, allow_nonfinite=allow_nonfinite)
        return _CONVERTERS[model_cfg.source](model_cfg.arch, path, allow_nonfinite=allow_nonfinite), []
    except ConversionError as e:
        if str(path) in str(e):
            raise
        raise type(e)(f"{path}: {e}") from e
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise ConversionError(f"{path} cannot be converted to {model_cfg.arch} ({checks.describe(e)})") from e


def _hf_preprocessing(path: Path, model_cfg: registry.ModelConfig) -> Any:
    """A transformers checkpoint's own ``preprocessor_config.json``, when it has one, as a spec."""
    if model_cfg.source != "hf":
        return None
    folder = path if path.is_dir() else path.parent
    return hf.preprocessing(folder / "preprocessor_config.json", model_cfg)
