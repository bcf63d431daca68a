"""Fine-tuned variables -> a file the original framework loads strictly, with a JSON beside it.

Targets: ``torchvision`` (a ``torch.save`` state_dict, ``.pth``), ``safetensors`` (the same keys, written
with safetensors' numpy API, no torch) and ``keras`` (a Keras 3 ``.weights.h5``). A model exports to a
target when the target framework publishes the same architecture under that name: the registry's
constructor arguments must be equal (torchvision's ResNet is v1.5, Keras' v1: no way across). The
file and its JSON are written under temporary names and renamed into place last, so a failure leaves
neither behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tl_jax.models import registry
from tl_jax.weights import export_keras, inverse, maps
from tl_jax.weights.export_keras import KERAS_APPS
from tl_jax.weights.inverse import ExportError
from tl_jax.weights.store import load_pretrained, read_metadata, sha256_file

# target -> (framework whose layout it is, file suffixes it accepts)
TARGETS = {"torchvision": ("torchvision", (".pth", ".pt")), "safetensors": ("torchvision", (".safetensors",)),
           "keras": ("keras", (".weights.h5",))}
# Constructor arguments that change no weight: the target's model is built with the run's value.
_NO_WEIGHTS = ("transform_input",)


def target_config(arch: str, source: str, to: str, model_kwargs: Mapping[str, Any] | None = None
                  ) -> registry.ModelConfig:
    """The registry entry whose layout ``to`` writes, after checking that it is the same architecture."""
    if to not in TARGETS:
        raise ExportError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    framework = TARGETS[to][0]
    own = registry.model_config(arch, source)
    if model_kwargs:
        raise ExportError(f"{arch} ({source}) built with {dict(model_kwargs)} has no {framework} layout; "
                          "export a model with the published architecture")
    try:
        target = registry.model_config(own.arch, framework)
    except ValueError:
        others = sorted(t for t, (fw, _) in TARGETS.items() if _same_arch(own, fw))
        raise ExportError(f"{framework} publishes no {own.arch}: {own.arch} ({source}) has no {framework} layout"
                          f"{'; export with --to ' + ' or --to '.join(others) if others else ''}") from None
    if not _same_arch(own, framework):
        diff = {k: v for k, v in _arch_args(own).items() if _arch_args(target).get(k) != v}
        raise ExportError(f"{own.arch} from {source} is another architecture than {framework}'s {own.arch} "
                          f"(here {diff}, there {({k: _arch_args(target).get(k) for k in diff})}): "
                          f"no {framework} layout; export to the source's own framework")
    return target


def _arch_args(model_cfg: registry.ModelConfig) -> dict[str, Any]:
    return {k: v for k, v in model_cfg.kwargs if k not in _NO_WEIGHTS}


def _same_arch(own: registry.ModelConfig, framework: str) -> bool:
    try:
        return _arch_args(registry.model_config(own.arch, framework)) == _arch_args(own)
    except ValueError:
        return False


def check_target(arch: str, source: str, to: str, output: str | os.PathLike,
                 model_kwargs: Mapping[str, Any] | None = None, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Everything about an export that is known before reading any weights: the layout exists, the
    file name fits the target, nothing would be overwritten unasked. Returns (file, its JSON)."""
    target_config(arch, source, to, model_kwargs)
    output = Path(output).absolute()
    suffixes = TARGETS[to][1]
    if not output.name.endswith(suffixes):
        raise ExportError(f"--to {to} writes {' or '.join(suffixes)} files; name the output e.g. "
                          f"{output.name.split('.')[0]}{suffixes[0]}")
    side = output.with_name(output.name + ".json")
    for path in (output, side):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    return output, side


def torchvision_state_dict(arch: str, source: str, variables: Mapping[str, Any]) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` -> torchvision's state_dict as numpy arrays, by the torchvision table
    run backwards (``bn.num_batches_tracked`` written as 0)."""
    target = target_config(arch, source, "torchvision")
    rules = maps.family(target.family).torchvision_rules(target)
    return inverse.to_source(variables, rules, what=f"{arch} to torchvision")


def framework_model(arch: str, source: str, to: str, num_classes: int) -> dict[str, Any]:
    """How to build the model that loads the file: the call and its keyword arguments."""
    own = registry.model_config(arch, source)
    if TARGETS[to][0] == "keras":
        kwargs = {"weights": None, "classes": num_classes, "classifier_activation": None}
        return {"call": f"keras.applications.{KERAS_APPS[own.arch]}", "kwargs": kwargs}
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if own.family == "inception":
        # The auxiliary classifier is not ported (train-time only); transform_input is the run's.
        kwargs.update(aux_logits=False, init_weights=False,
                      transform_input=bool(dict(own.kwargs).get("transform_input", True)))
    return {"call": f"torchvision.models.get_model({own.arch!r}, **kwargs)", "kwargs": kwargs}


def export_variables(arch: str, source: str, variables: Mapping[str, Any], to: str, output: str | os.PathLike, *,
                     metadata: Mapping[str, Any], model_kwargs: Mapping[str, Any] | None = None,
                     overwrite: bool = False) -> dict[str, Any]:
    """Write ``variables`` as ``to``'s file at ``output`` and ``output + ".json"``; returns the JSON.

    ``metadata`` (class names, preprocessing, ...) goes into the JSON beside what this adds: the
    target, how to build the model that loads the file, and the file's sha256.
    """
    output, side = check_target(arch, source, to, output, model_kwargs, overwrite=overwrite)
    suffixes = TARGETS[to][1]
    head = variables["params"].get("head")
    if head is None:
        raise ExportError(f"{arch} has no head to export: a backbone has no {to} layout with a classifier")
    num_classes = int(head["bias"].shape[0])
    if to == "keras":
        write = lambda path: export_keras.write(arch, source, variables, num_classes, path)  # noqa: E731
    else:
        state = torchvision_state_dict(arch, source, variables)
        write = lambda path: _write_state_dict(state, path, to)  # noqa: E731
    output.parent.mkdir(parents=True, exist_ok=True)
    suffix = next(s for s in suffixes if output.name.endswith(s))
    tmp = Path(tempfile.mkstemp(prefix=f".{output.name}.tmp-", suffix=suffix, dir=output.parent)[1])
    tmp_side = tmp.with_name(tmp.name + ".json")
    placed = False
    try:
        write(tmp)
        sidecar = {**dict(metadata), "arch": registry.model_config(arch, source).arch, "source": source,
                   "target": to, "num_classes": num_classes, "file": output.name, "sha256": sha256_file(tmp),
                   "framework_model": framework_model(arch, source, to, num_classes)}
        tmp_side.write_text(json.dumps(sidecar, indent=2) + "\n")
        os.replace(tmp, output)
        placed = True
        os.replace(tmp_side, side)
    except BaseException:
        for path in (tmp, tmp_side) + ((output,) if placed else ()):
            path.unlink(missing_ok=True)
        raise
    return sidecar


def export_weights(directory: str | os.PathLike, to: str, output: str | os.PathLike, *,
                   overwrite: bool = False) -> dict[str, Any]:
    """A weights directory (``save_pretrained``, ``convert_weights.py``, a run exported with
    ``restore.export``) -> ``to``'s file at ``output`` and its JSON; returns the JSON.
    ``tl_jax.experiment.export.export_weights`` also takes a training run's directory."""
    meta = read_metadata(directory)
    check_target(meta["arch"], meta["source"], to, output, meta.get("model_kwargs"), overwrite=overwrite)
    _, variables, meta = load_pretrained(directory)
    extra = {"class_names": meta.get("class_names"), "preprocessing": meta["preprocessing"],
             "input_size": meta["input_size"], "weights": meta.get("weights"),
             "exported_from": os.path.abspath(directory)}
    return export_variables(meta["arch"], meta["source"], variables, to, output, metadata=extra,
                            model_kwargs=meta.get("model_kwargs"), overwrite=overwrite)


def _write_state_dict(state: Mapping[str, Any], path: Path, to: str) -> None:
    if to == "safetensors":
        try:
            from safetensors.numpy import save_file
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("writing .safetensors files needs safetensors: pip install 'tl_jax[hub]'") from e
        save_file(dict(state), str(path), metadata={"format": "pt"})
        return
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("writing .pth files needs torch: pip install 'tl_jax[torch]' (or --to safetensors)") from e
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)
