"""transformers' ResNet (``microsoft/resnet-*``) -> Flax variables.

A ``save_pretrained`` directory holds ``config.json`` (the architecture) and ``model.safetensors``
(or ``pytorch_model.bin``). The config is checked against our v1.5 port before any tensor is read:
``downsample_in_bottleneck=True`` puts the stride on the first 1x1 (ResNet v1) and
``downsample_in_first_stage=True`` strides the first stage, and neither is our architecture.
Neither transformers nor torch is needed to read a ``.safetensors`` file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from tl_jax import preprocess
from tl_jax.models import registry, resnet
from tl_jax.weights import maps, tensors
from tl_jax.weights.convert import ConversionError
from tl_jax.weights.torchvision import convert_state_dict

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_EXPECTED = {"model_type": "resnet", "num_channels": 3, "embedding_size": 64, "hidden_act": "relu",
             "downsample_in_first_stage": False, "downsample_in_bottleneck": False}


def locate(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights file, config.json)`` of a ``save_pretrained`` directory or of a weights file beside its config."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None) if path.is_dir() else path
    if weights is None or not weights.is_file():
        raise FileNotFoundError(f"no {' or '.join(WEIGHT_FILES)} in {path}")
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"no config.json beside {weights}: transformers weights need their config "
                                "(the save_pretrained directory holds both)")
    return weights, config


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path} is not a readable JSON config ({e})") from e


def arch_of(config: Mapping[str, Any]) -> str:
    """Our arch name for a transformers ResNet config, or a ConversionError naming the difference."""
    for key, want in _EXPECTED.items():
        if key in config and config[key] != want:
            raise ConversionError(f"transformers ResNet with {key}={config[key]!r} is not our ResNet v1.5 port "
                                  f"(which has {key}={want!r})")
    if config.get("model_type", "resnet") != "resnet":
        raise ConversionError(f"config.json describes a {config['model_type']!r} model, not a transformers ResNet")
    depths, kind = tuple(config.get("depths", ())), config.get("layer_type")
    for depth, (sizes, bottleneck) in resnet.CONFIGS.items():
        if tuple(sizes) == depths and kind == ("bottleneck" if bottleneck else "basic"):
            widths = [w * (4 if bottleneck else 1) for w in (64, 128, 256, 512)]
            if list(config.get("hidden_sizes", widths)) != widths:
                raise ConversionError(f"transformers ResNet with hidden_sizes={config['hidden_sizes']} is not "
                                      f"resnet{depth} (which has {widths})")
            return f"resnet{depth}"
    raise ConversionError(f"transformers ResNet with depths={list(depths)} and layer_type={kind!r} matches none of "
                          f"our ports: " + ", ".join(f"resnet{d} {list(s)} "
                                                     f"{'bottleneck' if b else 'basic'}"
                                                     for d, (s, b) in resnet.CONFIGS.items()))


def convert_hf(arch: str | None, source: str | os.PathLike, model: Any = None, *,
               allow_nonfinite: bool = False) -> dict[str, Any]:
    """A transformers ResNet checkpoint (directory, or weights file beside ``config.json``) -> variables.

    ``arch`` (or None: taken from the config) must be the config's architecture.
    """
    weights, config_path = locate(source)
    found = arch_of(read_config(config_path))
    if arch is not None and registry.model_config(arch, "hf").arch != found:
        raise ConversionError(f"{config_path} describes {found}, not {arch}: pass --arch {found}")
    model_cfg = registry.model_config(found, "hf")
    return convert_state_dict(model_cfg, tensors.read_tensors(weights, allow_nonfinite=allow_nonfinite),
                              maps.family("resnet").hf_rules(model_cfg), model, source_name="transformers")


def preprocessing(path: Path, model_cfg: registry.ModelConfig) -> Any:
    """The spec of a ``preprocessor_config.json`` (crop_pct, resample, mean, std), or None without one.

    ``resample`` is PIL's filter number (2 bilinear, 3 bicubic); ``size`` is the crop (an int or
    ``{"shortest_edge": n}``).
    """
    if not path.is_file():
        return None
    cfg = read_config(path)
    size = cfg.get("size", model_cfg.input_size)
    size = size.get("shortest_edge", model_cfg.input_size) if isinstance(size, dict) else size
    resample = {2: "bilinear", 3: "bicubic"}.get(cfg.get("resample", 3))
    if resample is None:
        raise ConversionError(f"{path}: resample={cfg['resample']} is neither bilinear (2) nor bicubic (3)")
    return preprocess.timm_spec(f"hf:{path.parent.name}", int(size), float(cfg.get("crop_pct") or 0.875), resample,
                                tuple(cfg.get("image_mean", preprocess.IMAGENET_MEAN)),
                                tuple(cfg.get("image_std", preprocess.IMAGENET_STD)))
