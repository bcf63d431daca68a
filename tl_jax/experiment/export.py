"""Export a training run's checkpoint (or a converted-weights directory) to PyTorch or Keras files.

The run's parameters and BatchNorm statistics go through the converter's table backwards
(``tl_jax.weights.export``); its class names and preprocessing go into ``FILE.json`` beside the file.
"""
from __future__ import annotations

import os
from typing import Any

from tl_jax.experiment import restore
from tl_jax.experiment.rundir import RUN, read_json
from tl_jax.weights import export, store


def export_run(path: str, to: str, output: str, checkpoint: str | int = "latest", *,
                   overwrite: bool = False) -> dict[str, Any]:
    """Write the weights of ``path`` (a run directory of ``scripts/train.py``, or a directory that
    ``convert_weights.py`` / ``save_pretrained`` wrote) as ``to`` (torchvision | safetensors | keras)
    at ``output``, and ``output + ".json"``. Returns that JSON."""
    if os.path.isfile(os.path.join(path, store.METADATA)):
        return export.export_weights(path, to, output, overwrite=overwrite)
    run_json = os.path.join(path, RUN)
    if not os.path.isfile(run_json):
        raise FileNotFoundError(f"{path} is neither a run directory of scripts/train.py (no {RUN}) nor a "
                                f"converted-weights directory (no {store.METADATA})")
    info = read_json(run_json)
    export.check_target(info["arch"], info["source"], to, output, info.get("model_kwargs"), overwrite=overwrite)
    r = restore.restore_run(path, checkpoint)
    arch, source, kwargs = r.info["arch"], r.info["source"], r.info.get("model_kwargs")
    spec = restore.spec_at_size(r.info["preprocessing"], r.info["image_size"])
    extra = {"class_names": r.info.get("class_names"), "preprocessing": spec.to_dict(),
             "input_size": spec.crop_size, "weights": r.info.get("weights_tag"),
             "exported_from": os.path.abspath(path), "checkpoint_step": r.step}
    return export.export_variables(arch, source, r.variables, to, output, metadata=extra, model_kwargs=kwargs,
                                   overwrite=overwrite)
