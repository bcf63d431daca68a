"""The converted-weights store: an orbax checkpoint plus ``metadata.json``.

Layout of a store directory::

    DIR/checkpoint/     orbax StandardCheckpointer tree {"params", "batch_stats"}
    DIR/metadata.json   arch, source, num_classes, stages, preprocessing, provenance

Writes are atomic: everything is built in a hidden sibling directory that is
renamed into place only when complete, so an interrupted or failed save leaves
no directory behind (and ``overwrite=True`` keeps the old one until the new one
is ready). Reading needs neither torch nor Keras.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from tl_jax import preprocess
from tl_jax.models import channels, registry
from tl_jax.models.init import variables_template

CHECKPOINT = "checkpoint"
METADATA = "metadata.json"
COLLECTIONS = ("params", "batch_stats")
REQUIRED_METADATA = ("arch", "source", "num_classes", "stage_names", "preprocessing", "input_size",
                     "resize_size")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tl_jax")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def imagenet_class_names() -> list[str] | None:
    """The 1000 ImageNet class names in label order, from torchvision when it is installed.

    Reads torchvision's data file without importing torchvision: that import pulls in
    triton, which crashes a process that has already loaded TensorFlow, and costs ~2 s.
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "_meta.py"
    if not path.is_file():
        return None
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_IMAGENET_CATEGORIES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def build_metadata(arch: str, source: str, num_classes: int | None, *, source_file: str | os.PathLike | None = None,
                   source_sha256: str | None = None, class_names: list[str] | None | str = "imagenet",
                   weights: str | None = None, preprocessing: Any = None,
                   model_kwargs: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The standard ``metadata.json`` content for ``(arch, source)`` from the registry.

    ``weights`` is the published tag (default: the source's first); its preprocessing is
    stored unless ``preprocessing`` (a spec, its name or dict) overrides it. ``model_kwargs``
    are constructor arguments the stored variables need (VGG's ``include_classifier=False``).
    ``class_names="imagenet"`` stores torchvision's ImageNet names for a 1000-class
    head (null when torchvision is not installed or the head has other classes);
    pass a list for a fine-tuned head.
    """
    model_cfg = registry.model_config(arch, source)
    published = model_cfg.weights_for(weights)
    spec = preprocess.get_spec(preprocessing if preprocessing is not None else published.preprocessing)
    model_kwargs = dict(model_kwargs or {})
    stage_names = model_cfg.build(num_classes=num_classes, **model_kwargs).stage_names
    if class_names == "imagenet":
        class_names = imagenet_class_names() if num_classes == 1000 else None
    if class_names is not None and len(class_names) != (num_classes or 0):
        raise ValueError(f"{len(class_names)} class names for a head with {num_classes} classes")
    if source_file is not None and source_sha256 is None and os.path.isfile(source_file):
        source_sha256 = sha256_file(source_file)
    return {
        "arch": model_cfg.arch, "source": model_cfg.source,
        "num_classes": None if num_classes is None else int(num_classes),
        "weights": published.tag, "published_top1": published.top1, "model_kwargs": model_kwargs,
        "stage_names": list(stage_names), "preprocessing": spec.to_dict(),
        "input_size": spec.crop_size, "resize_size": spec.resize_size,
        "class_names": list(class_names) if class_names is not None else None,
        "source_file": os.path.basename(source_file) if source_file is not None else None,
        "source_sha256": source_sha256, "tl_jax_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def save_pretrained(directory: str | os.PathLike, variables: Mapping[str, Any], metadata: Mapping[str, Any],
                    *, overwrite: bool = False) -> Path:
    """Write ``variables`` (``params`` and, if any, ``batch_stats``) and ``metadata`` atomically.

    Refuses to replace an existing ``directory`` unless ``overwrite``. On any
    failure nothing new remains on disk (an overwritten store is kept intact).
    """
    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists; pass overwrite=True (--overwrite) to replace it")
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"metadata lacks {missing}; build it with build_metadata()")
    if "params" not in variables:
        raise ValueError(f"variables have no 'params' (found {sorted(variables)})")
    unknown = set(variables) - set(COLLECTIONS)
    if unknown:
        raise ValueError(f"unexpected variable collections {sorted(unknown)}; the store keeps {COLLECTIONS}")
    tree = {k: _to_numpy(variables[k]) for k in COLLECTIONS if variables.get(k)}
    text = json.dumps(dict(metadata), indent=2)  # fails early on non-JSON metadata

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the store is an ordinary directory
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / CHECKPOINT, tree)
            ckptr.wait_until_finished()
        (tmp / METADATA).write_text(text + "\n")
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.rename(directory, old / "store")
        os.rename(tmp, directory)
    except BaseException:
        if old is not None and (old / "store").exists() and not directory.exists():
            os.rename(old / "store", directory)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, dict(tree))


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no converted-weights directory at {directory} "
                                "(create one with scripts/convert_weights.py)")
    path = directory / METADATA
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {METADATA}: not a tl_jax converted-weights directory")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"{path} lacks the fields {missing}")
    return metadata


def load_pretrained(directory: str | os.PathLike, num_classes: int | None = None, seed: int = 0,
                    **model_kwargs: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Converted weights -> ``(model, variables, metadata)``, ready for ``model.apply``.

    The model is ``registry.create(arch, source, num_classes=..., **model_kwargs)``
    (e.g. ``dtype=jnp.bfloat16``, ``fold_frozen_bn=False``). With ``num_classes`` other
    than the stored head's, the head is replaced by a fresh one: exactly the head
    that ``model.init(jax.random.key(seed), x)`` gives (Flax ``Dense`` defaults:
    LeCun-normal kernel, zero bias), so the same seed gives the same head; every
    other variable is the stored one. ``metadata["num_classes"]`` and
    ``metadata["class_names"]`` then describe the new (unnamed) head. For features
    without any head, call ``model.apply(variables, x, return_features=True)``.
    ``in_channels=C`` adapts the stored RGB first convolution to C input channels as
    timm does (``tl_jax.models.channels``).
    """
    directory = Path(directory).absolute()
    metadata = read_metadata(directory)
    ckpt = directory / CHECKPOINT
    if not ckpt.is_dir():
        raise FileNotFoundError(f"{directory} has metadata but no {CHECKPOINT}/ (incomplete store)")
    model_cfg = registry.model_config(metadata["arch"], metadata["source"])
    stored_classes = metadata["num_classes"]  # None: the store holds a backbone without head
    num_classes = stored_classes if num_classes is None else int(num_classes)
    model_kwargs = {**metadata.get("model_kwargs", {}), **model_kwargs}
    stored_channels = metadata.get("model_kwargs", {}).get("in_channels", 3)
    stored_model = model_cfg.build(num_classes=stored_classes, **{**model_kwargs, "in_channels": stored_channels})
    template = variables_template(stored_model, model_cfg.input_size)

    try:
        with ocp.StandardCheckpointer() as ckptr:
            stored = ckptr.metadata(ckpt).item_metadata.tree
    except Exception as e:  # orbax raises various types for a damaged directory
        raise ValueError(f"{ckpt} is not a readable orbax checkpoint ({type(e).__name__}: {e})") from e
    _check_matches(stored, template, ckpt)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=device), template)
    with ocp.StandardCheckpointer() as ckptr:
        variables = dict(ckptr.restore(ckpt, abstract))

    model = model_cfg.build(num_classes=num_classes, **model_kwargs)
    if model.in_channels != stored_channels:   # timm's adapted first convolution (tl_jax.models.channels)
        if stored_channels != 3:
            raise ValueError(f"{directory} holds a first convolution for {stored_channels} channels; only RGB "
                             "weights adapt to another in_channels")
        variables = channels.adapt_variables(variables, model_cfg.first_conv, model.in_channels)
        metadata = {**metadata, "model_kwargs": {**metadata.get("model_kwargs", {}), "in_channels": model.in_channels}}
    if num_classes != stored_classes:
        shape = (1, model_cfg.input_size, model_cfg.input_size, model.in_channels)
        # Only the head's initializers survive dead-code elimination: no forward pass runs.
        head = jax.jit(lambda: model.init(jax.random.key(seed), jax.numpy.zeros(shape))["params"]["head"])()
        variables["params"] = {**{k: v for k, v in variables["params"].items() if k != "head"}, "head": head}
        metadata = {**metadata, "num_classes": num_classes, "class_names": None,
                    "head_init": f"model.init(jax.random.key({seed}))['params']['head']"}
    return model, variables, metadata


def _check_matches(stored: Any, template: Mapping[str, Any], where: Path) -> None:
    """Orbax restores whatever shapes it finds; insist that they are the model's."""
    flat_s = traverse_util.flatten_dict(dict(stored))
    flat_t = traverse_util.flatten_dict(dict(template))
    missing = ["/".join(p) for p in flat_t if p not in flat_s]
    unexpected = ["/".join(p) for p in flat_s if p not in flat_t]
    mismatch = [f"{'/'.join(p)}: stored {tuple(flat_s[p].shape)} vs model {tuple(t.shape)}"
                for p, t in flat_t.items() if p in flat_s and tuple(flat_s[p].shape) != tuple(t.shape)]
    if missing or unexpected or mismatch:
        raise ValueError(f"{where} does not fit its metadata's model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatches {mismatch[:5]}")
